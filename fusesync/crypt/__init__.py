"""Client-side encryption of chosen paths: the object format, the target's keys, and where
a passphrase comes from. Pure: no remote and no index here (sync/sealed.py moves the
objects); nothing here stores a passphrase or a key.
"""
