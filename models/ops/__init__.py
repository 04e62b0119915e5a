"""Multi-scale deformable attention (Deformable DETR), with compiled CPU/CUDA kernels and a PyTorch path."""
