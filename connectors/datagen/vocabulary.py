"""Vietnamese words the generator draws from: names by sex, ethnic groups, religions, places, business names.

Weights are rough shares (family names after published surname surveys, ethnic groups and religions after the 2019
census), good enough for realistic spreads, not statistics.
"""

from __future__ import annotations

FAMILY_NAMES: list[tuple[str, float]] = [
    ("Nguyễn", 38.0), ("Trần", 11.0), ("Lê", 9.5), ("Phạm", 7.0), ("Hoàng", 3.0), ("Huỳnh", 2.1), ("Phan", 4.5),
    ("Vũ", 2.5), ("Võ", 1.4), ("Đặng", 2.1), ("Bùi", 2.0), ("Đỗ", 1.4), ("Hồ", 1.3), ("Ngô", 1.3), ("Dương", 1.0),
    ("Lý", 0.5), ("Đào", 0.4), ("Đoàn", 0.4), ("Trịnh", 0.4), ("Trương", 0.4), ("Lâm", 0.3), ("Mai", 0.3),
    ("Đinh", 0.4), ("Hà", 0.3), ("Cao", 0.3), ("Lưu", 0.2), ("Tạ", 0.2), ("Chu", 0.2), ("Tô", 0.2), ("Vương", 0.2),
    ("Lương", 0.3), ("Quách", 0.1), ("La", 0.1), ("Kiều", 0.1), ("Thái", 0.2), ("Châu", 0.2),
]  # fmt: skip

MIDDLE_NAMES = {
    "M": [("Văn", 30.0), ("Đức", 8.0), ("Minh", 10.0), ("Quang", 6.0), ("Hữu", 6.0), ("Công", 5.0),
          ("Thành", 4.0), ("Xuân", 3.0), ("Ngọc", 3.0), ("Anh", 3.0), ("Hoàng", 3.0), ("Gia", 3.0), ("Trọng", 3.0),
          ("Tuấn", 2.0), ("Thanh", 3.0), ("Đình", 4.0), ("Bảo", 2.0), ("Nhật", 2.0)],
    "F": [("Thị", 40.0), ("Ngọc", 8.0), ("Thu", 5.0), ("Thanh", 6.0), ("Minh", 4.0), ("Phương", 3.0),
          ("Bảo", 3.0), ("Kim", 4.0), ("Khánh", 3.0), ("Hồng", 4.0), ("Mai", 2.0), ("Thùy", 3.0), ("Diệu", 2.0),
          ("Hoài", 2.0), ("Tường", 1.0), ("Quỳnh", 2.0)],
}  # fmt: skip

GIVEN_NAMES = {
    "M": ["An", "Bình", "Cường", "Dũng", "Đức", "Hải", "Hiếu", "Hoàng", "Hùng", "Huy", "Khoa", "Khánh", "Long",
          "Minh", "Nam", "Nghĩa", "Phong", "Phúc", "Quân", "Quang", "Sơn", "Tài", "Thắng", "Thành", "Tiến", "Toàn",
          "Trung", "Tuấn", "Tùng", "Việt", "Vinh", "Vũ", "Đạt", "Hưng", "Lâm", "Lộc", "Nhân", "Thịnh", "Trí", "Kiên"],
    "F": ["Anh", "Chi", "Dung", "Giang", "Hà", "Hằng", "Hạnh", "Hiền", "Hoa", "Hương", "Huyền", "Lan", "Linh",
          "Loan", "Mai", "Ngân", "Ngọc", "Nhung", "Oanh", "Phương", "Quỳnh", "Tâm", "Thảo", "Thơ", "Thủy", "Trang",
          "Trinh", "Tuyết", "Uyên", "Vân", "Yến", "Nhi", "My", "Hồng", "Liên", "Nga", "Thư", "Vy", "Diệp", "Ánh"],
}  # fmt: skip

ETHNICITIES: list[tuple[str, float]] = [
    ("Kinh", 85.3), ("Tày", 1.9), ("Thái", 1.9), ("Mường", 1.5), ("Khmer", 1.4), ("Mông", 1.5), ("Nùng", 1.1),
    ("Hoa", 0.8), ("Dao", 0.9), ("Gia Rai", 0.5), ("Ê Đê", 0.4), ("Ba Na", 0.3), ("Sán Chay", 0.2), ("Chăm", 0.2),
    ("Cơ Ho", 0.2), ("Xơ Đăng", 0.2), ("Sán Dìu", 0.2), ("Hrê", 0.1), ("Ra Glai", 0.1), ("Mnông", 0.1),
]  # fmt: skip

RELIGIONS: list[tuple[str, float]] = [
    ("Không", 86.3), ("Công giáo", 6.1), ("Phật giáo", 4.8), ("Tin lành", 1.0), ("Phật giáo Hòa Hảo", 1.0),
    ("Cao Đài", 0.6), ("Hồi giáo", 0.1), ("Bà-la-môn", 0.1),
]  # fmt: skip

BLOOD_TYPES: list[tuple[str | None, float]] = [("O", 42.0), ("B", 30.0), ("A", 20.0), ("AB", 5.0), (None, 3.0)]

STREETS = [
    "Lê Lợi", "Trần Hưng Đạo", "Nguyễn Huệ", "Hai Bà Trưng", "Lý Thường Kiệt", "Quang Trung", "Hùng Vương",
    "Điện Biên Phủ", "Nguyễn Trãi", "Phan Chu Trinh", "Lê Duẩn", "Nguyễn Du", "Trần Phú", "Bạch Đằng",
    "Lê Thánh Tông", "Ngô Quyền", "Phan Đình Phùng", "Võ Thị Sáu", "Nguyễn Văn Cừ", "Lạc Long Quân",
    "Hoàng Diệu", "Chu Văn An", "Tôn Đức Thắng", "Cách Mạng Tháng Tám", "30 Tháng 4", "Nguyễn Thị Minh Khai",
]  # fmt: skip

WARD_KINDS = [("Phường", 40.0), ("Xã", 55.0), ("Thị trấn", 5.0)]
VILLAGE_NAMES = [
    "An Bình", "Hòa Lợi", "Tân Phú", "Phước Long", "Đông Hòa", "Thạnh Mỹ", "Quảng Phú", "Hưng Lộc", "Mỹ Xuân",
    "Tân Hiệp", "Bình An", "Hòa Thuận", "Vĩnh Phúc", "Thanh Xuân", "Yên Hòa", "Kim Liên", "Phú Lâm", "Đồng Tâm",
]  # fmt: skip

ENTERPRISE_FORMS: list[tuple[str, float]] = [
    ("Công ty TNHH", 55.0), ("Công ty TNHH Một thành viên", 15.0), ("Công ty Cổ phần", 25.0),
    ("Doanh nghiệp tư nhân", 4.0), ("Công ty Hợp danh", 1.0),
]  # fmt: skip
TRADES = [
    "Thương mại", "Dịch vụ", "Xây dựng", "Đầu tư", "Sản xuất", "Vận tải", "Công nghệ", "Nông sản", "Thực phẩm",
    "Du lịch", "May mặc", "Xuất nhập khẩu", "Cơ khí", "Dược phẩm", "Giáo dục", "Phần mềm", "Bất động sản", "Thủy sản",
]  # fmt: skip
BRAND_WORDS = [
    "Hòa Bình", "Thành Công", "Phú Quý", "An Phát", "Hưng Thịnh", "Minh Long", "Đại Việt", "Sao Mai", "Trường Sơn",
    "Bình Minh", "Phương Nam", "Hồng Hà", "Cửu Long", "Tân Tiến", "Việt Tiến", "Kim Ngân", "Thiên Phúc", "Ánh Dương",
    "Đông Á", "Hoàng Gia", "Vạn Xuân", "Rạng Đông", "Thái Sơn", "Lạc Hồng",
]  # fmt: skip

CARD_ISSUER = "Cục Cảnh sát quản lý hành chính về trật tự xã hội"
PHONE_PREFIXES = ["32", "33", "34", "35", "36", "37", "38", "39", "70", "76", "77", "78", "79", "81", "82", "83",
                  "84", "85", "86", "88", "89", "90", "91", "93", "94", "96", "97", "98"]  # fmt: skip
