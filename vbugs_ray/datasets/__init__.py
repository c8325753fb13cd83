"""Real images: dataset sources (an image folder, a Parquet table, scikit-learn's digits, IDX
files such as Fashion-MNIST), the audit and held-out rows drawn from them, and parametric
corruptions (ImageNet-C style) of their images. The generator backends ``dataset`` and
``corruptions`` (vbugs_ray.roles.generators) read through this package instead of drawing."""
