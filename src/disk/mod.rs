//! Offline disk image surgery: GPT, ext4 via debugfs, qemu-img. (Being implemented.)
