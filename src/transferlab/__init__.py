"""transferlab: feature extraction or fine-tuning, measured on your own images.

The pipeline (``dvc.yaml``) runs one short script per stage from ``stages/``; each reads its
params section into a validated config (:mod:`transferlab.config`) and calls this library:

* :mod:`transferlab.registry` -- the one table of models and strategies
* :mod:`transferlab.manifest` -- the manifest every stage reads (paths, labels, splits)
* :mod:`transferlab.sources`, :mod:`transferlab.splitting` -- download: sources, splitting
* :mod:`transferlab.images` -- decoding, preprocessing, augmentation, datasets
* :mod:`transferlab.backbones` -- pretrained backbones by name with their preprocessing
* :mod:`transferlab.features` -- the Zarr feature store and feature extraction
* :mod:`transferlab.models`, :mod:`transferlab.strategies` -- heads, freezing, param groups
* :mod:`transferlab.training` -- the training loop
* :mod:`transferlab.metrics`, :mod:`transferlab.report` -- evaluation and the report
"""

__version__ = "0.1.0"
