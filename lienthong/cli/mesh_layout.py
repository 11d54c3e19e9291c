"""The demo mesh on one machine: who the members are, which gateway hosts what, and who may call what for which purpose.

Plain data, so `lienthong up`, the tests and the benchmark all build the same mesh through the registry API.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GatewaySpec:
    code: str
    port: int


@dataclass(frozen=True)
class MemberSpec:
    id: str
    name: str
    home_gateway: str
    subsystems: tuple[tuple[str, str], ...]  # (subsystem code, name)


@dataclass(frozen=True)
class ConnectorSpec:
    name: str  # `lienthong connector serve NAME`
    service: str
    subsystem: str
    gateway: str
    port: int
    spec_file: str
    # the data tracker: given the mesh's subject key and transaction log, which no other connector holds (issue 19)
    reads_subject_log: bool = False


@dataclass(frozen=True)
class GrantSpec:
    consumer: str
    service: str
    purposes: tuple[str, ...]
    endpoints: str | tuple[tuple[str, str], ...] = "*"
    fields: tuple[str, ...] | None = None
    per_minute: int = 6000
    per_day: int = 1_000_000
    # the purpose of a call that names none (X-Road clients send no X-Purpose); needed with several purposes
    default_purpose: str | None = None


GATEWAYS = (GatewaySpec("national", 8700), GatewaySpec("hanoi", 8701), GatewaySpec("nghean", 8702))

MEMBERS = (
    MemberSpec(
        "VN/GOV/BCA", "Bộ Công an (Ministry of Public Security)", "national",
        (("population", "Cơ sở dữ liệu quốc gia về dân cư"),),
    ),
    MemberSpec(
        "VN/GOV/BTC", "Bộ Tài chính (Ministry of Finance)", "national",
        (("business-registry", "Cơ sở dữ liệu quốc gia về đăng ký doanh nghiệp"),),
    ),
    MemberSpec(
        "VN/GOV/BHXH", "Bảo hiểm xã hội Việt Nam (Vietnam Social Security)", "national",
        (("insurance", "Cơ sở dữ liệu quốc gia về bảo hiểm"),),
    ),
    MemberSpec("VN/GOV/BTP", "Bộ Tư pháp (Ministry of Justice)", "national", (("civil-registry", "Hệ thống hộ tịch"),)),
    MemberSpec("VN/PROV/NGHEAN", "UBND tỉnh Nghệ An", "nghean", (("civil-status", "Hộ tịch Nghệ An"),)),
    MemberSpec("VN/PROV/HANOI", "UBND thành phố Hà Nội", "hanoi", (("public-services", "Cổng dịch vụ công Hà Nội"),)),
    MemberSpec(
        "VN/GOV/BKHCN", "Bộ Khoa học và Công nghệ (Ministry of Science and Technology), the mesh operator", "national",
        (("data-tracker", "Tra cứu ai đã xem dữ liệu của tôi (data tracker)"),),
    ),
    MemberSpec("VN/GOV/VPCP", "Văn phòng Chính phủ (Government Office)", "national",
               (("national-portal", "Cổng Dịch vụ công quốc gia"),)),
)  # fmt: skip

POPULATION = "VN/GOV/BCA/population/persons"
BUSINESS = "VN/GOV/BTC/business-registry/enterprises"
INSURANCE = "VN/GOV/BHXH/insurance/insurance"
CIVIL_STATUS = "VN/PROV/NGHEAN/civil-status/births"
DATA_TRACKER = "VN/GOV/BKHCN/data-tracker/accesses"

CONNECTORS = (
    ConnectorSpec("population", POPULATION, "VN/GOV/BCA/population", "national", 8801, "population.yaml"),
    ConnectorSpec(
        "business-registry", BUSINESS, "VN/GOV/BTC/business-registry", "national", 8802, "business-registry.yaml"
    ),
    ConnectorSpec("insurance", INSURANCE, "VN/GOV/BHXH/insurance", "national", 8803, "insurance.yaml"),
    ConnectorSpec("civil-status", CIVIL_STATUS, "VN/PROV/NGHEAN/civil-status", "nghean", 8804, "civil-status.yaml"),
    ConnectorSpec("data-tracker", DATA_TRACKER, "VN/GOV/BKHCN/data-tracker", "national", 8805, "data-tracker.yaml",
                  reads_subject_log=True),
)  # fmt: skip

NGHEAN_CIVIL = "VN/PROV/NGHEAN/civil-status"
HANOI_PORTAL = "VN/PROV/HANOI/public-services"
MOJ = "VN/GOV/BTP/civil-registry"
NATIONAL_PORTAL = "VN/GOV/VPCP/national-portal"  # calls the data tracker for the people it has logged in

BIRTH = "birth-registration"
DATA_SUBJECT_ACCESS = "data-subject-access"  # a person asks who read their data (Law 91/2025)
VERIFY = "identity-verification"
LICENSING = "business-licensing"

# Card fields a health insurance card answer is made of; Ha Noi's portal may see the insured record but not the card.
CARD_FIELDS = ("code", "category", "benefit_level", "province_code", "valid_from", "valid_to", "primary_care_facility")

GRANTS = (
    GrantSpec(NGHEAN_CIVIL, CIVIL_STATUS, (BIRTH,)),
    GrantSpec(NGHEAN_CIVIL, POPULATION, (BIRTH, VERIFY), default_purpose=BIRTH),
    GrantSpec(NGHEAN_CIVIL, INSURANCE, (BIRTH,)),
    GrantSpec(HANOI_PORTAL, CIVIL_STATUS, (BIRTH,)),
    GrantSpec(HANOI_PORTAL, POPULATION, (BIRTH, VERIFY), default_purpose=BIRTH),
    GrantSpec(HANOI_PORTAL, INSURANCE, (BIRTH,), fields=("si_number", "person_id", "full_name")),
    GrantSpec(HANOI_PORTAL, BUSINESS, (LICENSING,), fields=("code", "name", "legal_status", "head_office")),
    GrantSpec(MOJ, POPULATION, (VERIFY, BIRTH), default_purpose=VERIFY),
    GrantSpec(MOJ, BUSINESS, (LICENSING,)),
    GrantSpec(NATIONAL_PORTAL, DATA_TRACKER, (DATA_SUBJECT_ACCESS,), per_minute=60),
)
