"""The foundation every layer builds on: errors, the task, images and the scanning of image
inputs, tabular inputs, output files and CLI helpers. It imports nothing else of the project."""

from core.errors import InputError, NotFittedError, TrustorchError
from core.image_inputs import ScannedImages, scan_images
from core.images import ImageRef, LabelledImage, SkippedImage, open_image
from core.task import Task, load_task, preset_names

__all__ = [
    "ImageRef",
    "InputError",
    "LabelledImage",
    "NotFittedError",
    "ScannedImages",
    "SkippedImage",
    "Task",
    "TrustorchError",
    "load_task",
    "open_image",
    "preset_names",
    "scan_images",
]
