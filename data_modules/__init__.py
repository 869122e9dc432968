"""One LightningDataModule per dataset, thin over ``mpgsam2.data`` (no parsing happens here)."""

from data_modules.base import ReferringVideoDataModule
from data_modules.synthetic import SyntheticDataModule
from data_modules.ytvos import RefYTVOSDataModule

__all__ = ["RefYTVOSDataModule", "ReferringVideoDataModule", "SyntheticDataModule"]

from data_modules.refcoco import RefCOCODataModule  # noqa: E402 - appended section

__all__ += ["RefCOCODataModule"]

from data_modules.davis import RefDAVISDataModule  # noqa: E402 - appended section
from data_modules.mevis import MeViSDataModule  # noqa: E402 - appended section

__all__ += ["MeViSDataModule", "RefDAVISDataModule"]
