"""Picture sizes read from encoded frames (VP8 keyframe header, H.264 SPS) without decoding."""

from __future__ import annotations

__all__ = ["h264_size", "vp8_size"]


def vp8_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a VP8 keyframe header (RFC 6386 9.1), or None."""
    if len(data) < 10 or data[0] & 1 or data[3:6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(data[6:8], "little") & 0x3FFF
    height = int.from_bytes(data[8:10], "little") & 0x3FFF
    return width, height


class _Bits:
    """Big-endian bit reader with Exp-Golomb codes (H.264 7.2, 9.1)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def bit(self) -> int:
        byte = self.pos >> 3
        if byte >= len(self.data):
            raise ValueError("SPS truncated")
        value = (self.data[byte] >> (7 - (self.pos & 7))) & 1
        self.pos += 1
        return value

    def bits(self, count: int) -> int:
        value = 0
        for _ in range(count):
            value = (value << 1) | self.bit()
        return value

    def ue(self) -> int:
        zeros = 0
        while self.bit() == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad Exp-Golomb code")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        value = self.ue()
        return (value + 1) // 2 if value & 1 else -(value // 2)


def _nal_units(data: bytes) -> list[bytes]:
    """NAL units of an Annex B byte stream (start codes 00 00 01 / 00 00 00 01)."""
    units: list[bytes] = []
    start = data.find(b"\x00\x00\x01")
    while start != -1:
        start += 3
        end = data.find(b"\x00\x00\x01", start)
        unit = data[start:] if end == -1 else data[start:end]
        units.append(unit.rstrip(b"\x00") if end != -1 else unit)
        start = end
    return units


def _unescape(nal: bytes) -> bytes:
    return nal.replace(b"\x00\x00\x03", b"\x00\x00")


def h264_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the SPS in an Annex B H.264 frame, or None when it has none."""
    for nal in _nal_units(data):
        if not nal or nal[0] & 0x1F != 7:
            continue
        try:
            return _sps_size(_Bits(_unescape(nal[1:])))
        except ValueError:
            return None
    return None


def _skip_scaling_list(bits: _Bits, size: int) -> None:
    last = next_scale = 8
    for _ in range(size):
        if next_scale:
            next_scale = (last + bits.se() + 256) % 256
        last = next_scale or last


def _sps_size(bits: _Bits) -> tuple[int, int]:
    profile = bits.bits(8)
    bits.bits(16)  # constraint flags, level
    bits.ue()  # seq_parameter_set_id
    chroma_format = 1
    if profile in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        chroma_format = bits.ue()
        if chroma_format == 3:
            bits.bit()  # separate_colour_plane_flag
        bits.ue()
        bits.ue()  # bit depths
        bits.bit()  # qpprime_y_zero_transform_bypass_flag
        if bits.bit():  # seq_scaling_matrix_present_flag
            for index in range(8 if chroma_format != 3 else 12):
                if bits.bit():
                    _skip_scaling_list(bits, 16 if index < 6 else 64)
    bits.ue()  # log2_max_frame_num_minus4
    poc_type = bits.ue()
    if poc_type == 0:
        bits.ue()
    elif poc_type == 1:
        bits.bit()
        bits.se()
        bits.se()
        for _ in range(bits.ue()):
            bits.se()
    bits.ue()  # max_num_ref_frames
    bits.bit()  # gaps_in_frame_num_value_allowed_flag
    width_mbs = bits.ue() + 1
    height_units = bits.ue() + 1
    frame_mbs_only = bits.bit()
    if not frame_mbs_only:
        bits.bit()
    bits.bit()  # direct_8x8_inference_flag
    width = width_mbs * 16
    height = (2 - frame_mbs_only) * height_units * 16
    if bits.bit():  # frame_cropping_flag
        left, right, top, bottom = bits.ue(), bits.ue(), bits.ue(), bits.ue()
        crop_x = 1 if chroma_format == 0 else (2 if chroma_format in (1, 2) else 1)
        crop_y = (2 - frame_mbs_only) * (2 if chroma_format == 1 else 1)
        width -= crop_x * (left + right)
        height -= crop_y * (top + bottom)
    return width, height
