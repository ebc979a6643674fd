"""Small general utilities that several layers share (atomic writes, hashing)."""
