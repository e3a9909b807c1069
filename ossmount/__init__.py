"""ossmount: mount an Alibaba Cloud OSS bucket as a POSIX file system."""

__version__ = "0.1.0"
