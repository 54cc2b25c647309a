"""transferlab: feature extraction or fine-tuning, measured on your own images.

The pipeline (``dvc.yaml``) runs one short script per stage from ``stages/``; each reads its
params section into a validated config (:mod:`transferlab.config`) and calls this library:

* :mod:`transferlab.registry` -- the one table of models and strategies
* :mod:`transferlab.data.manifest` -- the manifest every stage reads (paths, labels, splits)
* :mod:`transferlab.data.sources`, :mod:`transferlab.data.splitting` -- download: sources, splitting
* :mod:`transferlab.data.images` -- decoding, preprocessing, augmentation, datasets
* :mod:`transferlab.features.backbones` -- pretrained backbones by name with their preprocessing
* :mod:`transferlab.features.store` -- the Zarr feature store and feature extraction
* :mod:`transferlab.training.models`, :mod:`transferlab.training.strategies` -- heads, freezing, param groups
* :mod:`transferlab.training.loop` -- the training loop
* :mod:`transferlab.verdict.metrics`, :mod:`transferlab.report.document` -- evaluation and the report
"""

__version__ = "0.1.0"
