"""Shapes of the generated population: provinces weighted by population, adult ages, household and card mixes."""

from __future__ import annotations

# Province -> population in thousands (2019 census, rounded): weights for where households live.
PROVINCE_WEIGHTS: dict[str, float] = {
    "001": 8054, "002": 854, "004": 530, "006": 314, "008": 785, "010": 731, "011": 599, "012": 460, "014": 1248,
    "015": 822, "017": 855, "019": 1287, "020": 782, "022": 1321, "024": 1804, "025": 1464, "026": 1152,
    "027": 1369, "030": 1893, "031": 2029, "033": 1253, "034": 1861, "035": 853, "036": 1781, "037": 983,
    "038": 3641, "040": 3328, "042": 1289, "044": 896, "045": 633, "046": 1129, "048": 1135, "049": 1496,
    "051": 1232, "052": 1487, "054": 873, "056": 1232, "058": 591, "060": 1231, "062": 541, "064": 1514,
    "066": 1870, "067": 623, "068": 1297, "070": 995, "072": 1170, "074": 2456, "075": 3097, "077": 1149,
    "079": 8993, "080": 1689, "082": 1765, "083": 1289, "084": 1009, "086": 1023, "087": 1600, "089": 1908,
    "091": 1724, "092": 1236, "093": 733, "094": 1200, "095": 908, "096": 1194,
}  # fmt: skip

# Where people registered elsewhere moved to (temporary residence, migrant household members).
MIGRATION_TARGETS: list[tuple[str, float]] = [("079", 40.0), ("001", 25.0), ("074", 15.0), ("075", 10.0),
                                              ("048", 5.0), ("031", 5.0)]  # fmt: skip

# Age of a household head, by 5-year band start: a pyramid narrowing with age once adulthood is reached.
HEAD_AGE_BANDS: list[tuple[int, float]] = [
    (22, 5.0), (27, 9.0), (32, 12.0), (37, 12.0), (42, 11.0), (47, 10.0), (52, 9.0), (57, 8.0), (62, 7.0),
    (67, 6.0), (72, 4.5), (77, 3.0), (82, 1.5), (87, 0.5),
]  # fmt: skip

HOUSEHOLD_KINDS: list[tuple[str, float]] = [
    ("family", 72.0), ("single_parent", 9.0), ("elderly_couple", 10.0), ("siblings", 9.0),
]  # fmt: skip
CHILD_COUNTS: list[tuple[int, float]] = [(0, 8.0), (1, 25.0), (2, 42.0), (3, 18.0), (4, 7.0)]

# Health insurance category by stage of life (codes of connectors.rules.insurance_codes.CATEGORIES).
CATEGORIES_SCHOOL: list[tuple[str, float]] = [("HS", 90.0), ("HN", 4.0), ("DT", 4.0), ("CN", 2.0)]
CATEGORIES_YOUNG_ADULT: list[tuple[str, float]] = [("SV", 50.0), ("GD", 25.0), ("DN", 20.0), ("HN", 5.0)]
CATEGORIES_WORKING: list[tuple[str, float]] = [
    ("DN", 42.0), ("GD", 25.0), ("HC", 6.0), ("NN", 4.0), ("CN", 5.0), ("HN", 4.0), ("DT", 4.0), ("XK", 2.0),
    ("CA", 1.0), ("QN", 1.0), ("TN", 2.0), ("NO", 2.0), ("CH", 2.0),
]  # fmt: skip
CATEGORIES_RETIRED: list[tuple[str, float]] = [("HT", 40.0), ("GD", 28.0), ("BT", 12.0), ("CC", 3.0), ("KC", 5.0),
                                               ("HN", 4.0), ("CK", 3.0), ("TS", 5.0)]  # fmt: skip

LEGAL_STATUS_WEIGHTS: list[tuple[str, float]] = [
    ("active", 80.0), ("suspended", 7.0), ("not_at_registered_address", 4.0), ("revoked_tax_enforcement", 2.0),
    ("in_dissolution_or_restructuring", 3.0), ("in_bankruptcy", 0.5), ("ceased", 3.5),
]  # fmt: skip

INSURED_SHARE = 0.89  # of people aged 6 and over; every child under 6 is insured (TE card)
ENTERPRISES_PER_PERSON = 0.01
BRANCH_SHARE = 0.1  # of enterprises that have 1-3 branches
FACILITIES_PER_PROVINCE = 30
