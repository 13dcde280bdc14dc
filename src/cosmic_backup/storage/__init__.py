"""Where bytes live, behind one small interface (`Store`): a local folder today, S3 later."""

from cosmic_backup.storage.base import ObjectInfo, Store, StoreNotFound

__all__ = ["ObjectInfo", "Store", "StoreNotFound"]
