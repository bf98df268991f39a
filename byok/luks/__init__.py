"""The LUKS layer: cryptsetup operations, header parsing without cryptsetup, sector decryption on
OpenSSL, offline recovery and QEMU interop. Sees passphrases, never key references."""
