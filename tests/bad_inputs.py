"""Helpers for the bad-input tables: files that lie, and the one-line error check for any entry point."""

import io
import os
import struct
import zipfile
import zlib
from typing import Optional

from PIL import Image


def call(entry, argv: list, capsys) -> tuple:
    """Run an entry point's `main(argv)` in this process; returns (exit code, stdout, stderr)."""
    try:
        code = entry(list(argv))
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code: int, out: str, err: str, *fragments: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, (code, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    assert "Traceback" not in out + err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def png_bytes(size: tuple = (32, 32), colour: tuple = (40, 100, 0)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` pixels and holds none: a decompression bomb as the decoder sees it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def image_tree(root: str, classes: tuple = ("a", "b"), per_class: int = 8, val_per_class: int = 2) -> str:
    """`root/train/<class>/<i>.png` and `root/val/<class>/<i>.png`, 32x32 images."""
    for split, count in (("train", per_class), ("val", val_per_class)):
        for label, name in enumerate(classes):
            folder = os.path.join(root, split, name)
            os.makedirs(folder)
            for i in range(count):
                with open(os.path.join(folder, f"{i}.png"), "wb") as f:
                    f.write(png_bytes(colour=(40 * i % 256, 120 * label, 0)))
    return root


def zip_tree(root: str, per_class: int = 8) -> str:
    """The reference zip layout: train.zip/val.zip with train_map.txt/val_map.txt, two classes."""
    os.makedirs(root, exist_ok=True)
    for split, count in (("train", per_class), ("val", 2)):
        lines = []
        with zipfile.ZipFile(os.path.join(root, f"{split}.zip"), "w") as archive:
            for label, name in enumerate(("a", "b")):
                for i in range(count):
                    member = f"{name}/{i}.png"
                    archive.writestr(member, png_bytes(colour=(30 * i % 256, 120 * label, 0)))
                    lines.append(f"{member}\t{label}")
        with open(os.path.join(root, f"{split}_map.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    return root


def corrupt_member_crc(zip_path: str, member: str) -> None:
    """Flip one byte of a stored member's data, so reading it fails its CRC check."""
    with zipfile.ZipFile(zip_path) as archive:
        info = archive.getinfo(member)
    with open(zip_path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", f.read(4))
        data_at = info.header_offset + 30 + name_length + extra_length + info.compress_size // 2
        f.seek(data_at)
        byte = f.read(1)
        f.seek(data_at)
        f.write(bytes([byte[0] ^ 0xFF]))


def patch_member_entry(zip_path: str, member: str, flag_bits: int = 0, method: Optional[int] = None) -> None:
    """Set general-purpose flag bits (1: encrypted) or the compression method of a member's central-directory
    entry, which is what zipfile reads them from: the member then cannot be read without a password or a codec."""
    data = bytearray(open(zip_path, "rb").read())
    at = data.find(b"PK\x01\x02")
    while at != -1:
        name_length = struct.unpack_from("<H", data, at + 28)[0]
        if bytes(data[at + 46:at + 46 + name_length]) == member.encode():
            struct.pack_into("<H", data, at + 8, struct.unpack_from("<H", data, at + 8)[0] | flag_bits)
            if method is not None:
                struct.pack_into("<H", data, at + 10, method)
        at = data.find(b"PK\x01\x02", at + 4)
    with open(zip_path, "wb") as f:
        f.write(data)
