"""Datasets as tensors: MNIST, Fashion-MNIST and CIFAR-10 (IDX directories, packages, torchvision)."""

from pellucid.data.datasets import DATASETS, ImageDataset, check_classes, load_dataset, select_classes
from pellucid.data.mnist import load_mnist
from pellucid.data.fashion_mnist import load_fashion_mnist  # registers "fashion-mnist"
from pellucid.data.cifar10 import load_cifar10  # registers "cifar10"
from pellucid.data.validation import check_images, check_labels, check_model_input

__all__ = ["DATASETS", "ImageDataset", "check_classes", "check_images", "check_labels",
           "check_model_input", "load_dataset", "load_cifar10", "load_fashion_mnist", "load_mnist",
           "select_classes"]
