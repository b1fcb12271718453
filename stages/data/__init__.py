"""Built-in data: the procedural "gem-synth" dataset and ingestion of user annotation sets and robot episodes.

Import the module you need (generate, reader, ...): this file stays light so that `gemctl --help` does not pay
for h5py/PIL. Layout of a prepared dataset directory:

    dataset.json              manifest: name, source, seed, counts, paths, content digest
    files.md5                 md5sum-format list of the data files (relative for synth; absolute for files, where
                              it lists annotation files and episodes: images are digested by path, size and mtime)
    index-NNN.npy             files: set NNN's samples as (byte offset, line number) rows, memory-mapped by the reader
    annotations.jsonl         LLaVA/Qwen-style QA samples (synth only)
    images/*.png, depth/*.png RGB and 16-bit millimetre depth with the same basename (synth only)
    episodes/episode_*.hdf5   action episodes (synth only)
"""

from .config import AnnotationSet, DataConfig

__all__ = ["AnnotationSet", "DataConfig"]
