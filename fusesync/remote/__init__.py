"""The remote side: the Remote protocol, its S3 implementation and a fault injector.

Only this package speaks to the object store; nothing above it sees boto3 or botocore.
"""

from fusesync.remote.base import (
    DIR_CONTENT_TYPE,
    Attrs,
    Head,
    Listed,
    Progress,
    Remote,
    WritableFile,
)

__all__ = ["DIR_CONTENT_TYPE", "Attrs", "Head", "Listed", "Progress", "Remote", "WritableFile"]
