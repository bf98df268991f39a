"""The attach-path hook: resolve the user's key, guard against os-brick's auto-format, unlock
through os-brick's encryptors on real dm-crypt in a guest kernel."""
