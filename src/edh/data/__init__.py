"""Datasets. Importing this package registers the built-in ones."""

from edh.data import images  # noqa: F401
from edh.data import scenes  # noqa: F401
from edh.data import scene_captions  # noqa: F401
from edh.data import masks  # noqa: F401
from edh.data import text  # noqa: F401
from edh.data import text_classification  # noqa: F401
from edh.data import coco  # noqa: F401
from edh.data import speech  # noqa: F401
from edh.data import spoken_numbers  # noqa: F401
from edh.data.base import DataBundle, DataFilesMissingError, DataInfo, build_data

__all__ = ["DataBundle", "DataFilesMissingError", "DataInfo", "build_data"]
