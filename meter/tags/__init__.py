"""Tag keys rolled up by day (SPEC section 8): which keys, adding one (with its history) and
removing one."""

from meter.tags.service import TagInUse, add_tag_key, list_tag_keys, remove_tag_key

__all__ = ["TagInUse", "add_tag_key", "list_tag_keys", "remove_tag_key"]
