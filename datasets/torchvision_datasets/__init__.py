"""Image-folder data sets in the style of ``torchvision.datasets``, with in-memory caching."""
from .coco import AnnotationFileError, CocoDetection, load_coco_api, read_image

__all__ = ["AnnotationFileError", "CocoDetection", "load_coco_api", "read_image"]
