"""Data: Sources (where images come from) and ``ViTDataModule`` (loaders, transforms, normalisation).

Sources: ``digits.DigitsSource`` (embedded default), ``folder.ImageFolderSource``, ``hf.HFSource``,
``shards.ShardSource``. Import them from their modules; this package imports nothing heavy itself.
"""
