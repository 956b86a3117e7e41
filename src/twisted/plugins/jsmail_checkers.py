"""twisted.cred checker plugins: ``--auth hashed:FILE`` and ``--auth checkpassword:PROGRAM``."""

from jsmail.auth import CheckpasswordFactory, HashedPasswordFileFactory

hashed = HashedPasswordFileFactory()
checkpassword = CheckpasswordFactory()
