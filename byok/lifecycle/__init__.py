"""The prototype Cinder side: volumes, clones, backups, images, rotation and re-encryption
(journaled), on the key path and the LUKS layer."""
