"""Where bytes live, behind one small interface (`Store`): a local folder, an S3 bucket."""

from cosmic_backup.storage.base import (
    ObjectInfo,
    Store,
    StoreNotFound,
    StorePermanent,
    StoreUnavailable,
)

__all__ = ["ObjectInfo", "Store", "StoreNotFound", "StorePermanent", "StoreUnavailable"]
