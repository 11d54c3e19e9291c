"""Builds the country one household at a time: its people and every row hanging off them in the four databases.

Rows are plain tuples in the tables' column order (`COLUMNS`), dates as ISO strings and booleans as 0/1, so the
loader can hand them to SQLite's executemany or PostgreSQL's COPY without conversion. Every reference a row makes
points at a row built in the same household or earlier (parents, spouses, legal representatives, owners, cards).
Only counters are kept between households, so memory stays constant however many people are generated.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from dataclasses import dataclass

from connectors.datagen import demography as dem
from connectors.datagen import vocabulary as voc
from connectors.datagen.fast_random import FastRandom
from connectors.datagen.picker import Picker
from connectors.datagen.serials import ScrambledCounters
from connectors.rules import enterprise_code
from connectors.rules.insurance_codes import CATEGORIES, CHILD_CATEGORY, HI_PROVINCE_CODES
from connectors.rules.provinces import PROVINCES
from connectors.rules.vietnamese import fold
from connectors.schema import business, civil_status, insurance, population

Row = tuple[object, ...]

# "database.table" -> the columns each row carries, in order (autoincrement ids are left to the database).
COLUMNS: dict[str, tuple[str, ...]] = {
    "population.persons": tuple(c.name for c in population.persons.columns),
    "population.households": tuple(c.name for c in population.households.columns),
    "population.residence": tuple(c.name for c in population.residence.columns if c.name != "id"),
    "business.enterprises": tuple(c.name for c in business.enterprises.columns),
    "business.owners": tuple(c.name for c in business.owners.columns if c.name != "id"),
    "insurance.insured": tuple(c.name for c in insurance.insured.columns),
    "insurance.hi_cards": tuple(c.name for c in insurance.hi_cards.columns),
    "civil_status.births": tuple(c.name for c in civil_status.births.columns),
}

CARD_START = dt.date(2016, 1, 1).toordinal()  # the 12-digit chip-less card was first issued in 2016
CARD_MILESTONES = (25, 40, 60)
PLACE_POOL = 512


def _add_years(day: dt.date, years: int) -> dt.date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February
        return day.replace(year=day.year + years, day=28)


_ISO: dict[int, str] = {}


def _iso(ordinal: int) -> str:
    """ISO date of a day number, cached: a few tens of thousands of distinct days cover every row."""
    text = _ISO.get(ordinal)
    if text is None:
        text = _ISO[ordinal] = dt.date.fromordinal(ordinal).isoformat()
    return text


def _anniversary(birth_iso: str, years: int) -> str:
    """ISO date of the `years`-th birthday (28 February for those born on the 29th)."""
    rest = "-02-28" if birth_iso[4:] == "-02-29" else birth_iso[4:]
    return f"{int(birth_iso[:4]) + years:04d}{rest}"


@dataclass(slots=True)
class Person:
    id: str
    sex: str
    birth: dt.date
    birth_iso: str
    age: int
    family: str
    full_name: str
    province: str  # of birth registration
    hometown: str
    ethnicity: str
    religion: str
    relation: str
    marital: str
    father_id: str | None = None
    mother_id: str | None = None
    spouse_id: str | None = None
    death: dt.date | None = None


class World:
    """The generator's state: one seeded random.Random, the counters behind every identifier, and the pickers."""

    def __init__(self, seed: int, as_of: dt.date) -> None:
        self.rng = FastRandom(seed)
        self.as_of = as_of
        self.as_of_ord = as_of.toordinal()
        self.year_start, self.year_end = f"{as_of.year:04d}-01-01", f"{as_of.year:04d}-12-31"
        self.rows: dict[str, list[Row]] = {}
        self.person_serials = ScrambledCounters(6, seed)
        self.old_ids = ScrambledCounters(9, seed + 1)
        self.si_serials = ScrambledCounters(8, seed + 2)
        self.enterprise_serials = ScrambledCounters(7, seed + 3)
        self.household_serials: dict[str, int] = {}
        self.birth_serials: dict[str, int] = {}
        self.recent_enterprises: deque[tuple[str, str]] = deque(maxlen=200)
        self.province = Picker(list(dem.PROVINCE_WEIGHTS.items()))
        self.migration = Picker(dem.MIGRATION_TARGETS)
        self.head_band = Picker(dem.HEAD_AGE_BANDS)
        self.kind = Picker(dem.HOUSEHOLD_KINDS)
        self.child_count = Picker(dem.CHILD_COUNTS)
        self.family = Picker(voc.FAMILY_NAMES)
        self.middle = {sex: Picker(names) for sex, names in voc.MIDDLE_NAMES.items()}
        self.ethnicity = Picker(voc.ETHNICITIES)
        self.religion = Picker(voc.RELIGIONS)
        self.blood = Picker(voc.BLOOD_TYPES)
        self.ward_kind = Picker(voc.WARD_KINDS)
        self.enterprise_form = Picker(voc.ENTERPRISE_FORMS)
        self.legal_status = Picker(dem.LEGAL_STATUS_WEIGHTS)
        self.cards = {
            "school": Picker(dem.CATEGORIES_SCHOOL),
            "young": Picker(dem.CATEGORIES_YOUNG_ADULT),
            "working": Picker(dem.CATEGORIES_WORKING),
            "retired": Picker(dem.CATEGORIES_RETIRED),
        }
        self.facilities = {code: self._facilities(code) for code in PROVINCES}
        # places are drawn from a pool per province: one draw instead of three on the hottest path
        self.places = {code: [self._new_place(code) for _ in range(PLACE_POOL)] for code in PROVINCES}
        self._bind_appenders()

    # --- small pieces ---------------------------------------------------------------------------------------------

    def _facilities(self, province: str) -> list[tuple[str, str]]:
        hi2, name = HI_PROVINCE_CODES[province], PROVINCES[province]
        facilities = [(f"{hi2}001", f"Bệnh viện Đa khoa {name}")]
        for k in range(2, dem.FACILITIES_PER_PROVINCE + 1):
            village = voc.VILLAGE_NAMES[(k * 7 + int(province)) % len(voc.VILLAGE_NAMES)]
            label = f"Trung tâm Y tế khu vực {village}" if k <= 6 else f"Trạm Y tế {village} {k}"
            facilities.append((f"{hi2}{k:03d}", f"{label}, {name}"))
        return facilities

    def _new_place(self, province: str) -> str:
        rng = self.rng
        return f"{self.ward_kind.pick(rng)} {rng.choice(voc.VILLAGE_NAMES)}, {PROVINCES[province]}"

    def _place(self, province: str) -> str:
        return self.places[province][int(self.rng.random() * PLACE_POOL)]

    def _address(self, province: str) -> str:
        rng = self.rng
        if rng.random() < 0.5:
            return f"Số {rng.randint(1, 399)} {rng.choice(voc.STREETS)}, Phường {rng.choice(voc.VILLAGE_NAMES)}, " + (
                PROVINCES[province]
            )
        return f"Thôn {rng.randint(1, 20)}, Xã {rng.choice(voc.VILLAGE_NAMES)}, {PROVINCES[province]}"

    def _name(self, sex: str, family: str) -> str:
        rng = self.rng
        return f"{family} {self.middle[sex].pick(rng)} {rng.choice(voc.GIVEN_NAMES[sex])}"

    def _person(self, sex: str, age: int, family: str, province: str, relation: str, marital: str,
                hometown: str | None = None, ethnicity: str | None = None, religion: str | None = None) -> Person:
        rng = self.rng
        birth_ord = self.as_of_ord - age * 365 - age // 4 - rng.below(365)
        birth = dt.date.fromordinal(birth_ord)
        age = (self.as_of - birth).days * 4 // 1461
        prefix = f"{province}{2 * ((birth.year - 1900) // 100) + (sex == 'F')}{birth.year % 100:02d}"
        person_id = f"{prefix}{self.person_serials.next(prefix):06d}"
        return Person(
            id=person_id, sex=sex, birth=birth, birth_iso=_iso(birth_ord), age=age, family=family,
            full_name=self._name(sex, family),
            province=province, hometown=hometown or self._place(province),
            ethnicity=ethnicity or self.ethnicity.pick(rng), religion=religion or self.religion.pick(rng),
            relation=relation, marital=marital,
        )  # fmt: skip

    def _origin(self, home: str) -> str:
        """Where an adult living in `home` had their birth registered: mostly there, else anywhere."""
        return home if self.rng.random() < 0.78 else self.province.pick(self.rng)

    def _child_ages(self, mother_age: int, count: int) -> list[int]:
        low, high = max(18, mother_age - 35), min(42, mother_age)
        if low > high:
            return []
        return [mother_age - self.rng.randint(low, high) for _ in range(count)]

    # --- one household --------------------------------------------------------------------------------------------

    def household(self, cap: int) -> int:
        """Build one household of at most `cap` people (deceased relatives count); return how many persons rows."""
        rng = self.rng
        home = self.province.pick(rng)
        kind = self.kind.pick(rng) if cap > 1 else "single"
        members: list[Person] = []
        deceased: list[Person] = []
        pending_birth: tuple[Person, Person] | None = None
        if kind == "family":
            head_sex = "M" if rng.random() < 0.85 else "F"
            head_age = self.head_band.pick(rng) + rng.below(5)
            head = self._person(head_sex, head_age, self.family.pick(rng), self._origin(home), "head", "married")
            spouse_age = max(18, head_age + (rng.randint(-6, 2) if head_sex == "M" else rng.randint(-2, 6)))
            spouse_sex = "F" if head_sex == "M" else "M"
            spouse = self._person(spouse_sex, spouse_age, self.family.pick(rng), self._origin(home), "spouse",
                                  "married")  # fmt: skip
            head.spouse_id, spouse.spouse_id = spouse.id, head.id
            father, mother = (head, spouse) if head_sex == "M" else (spouse, head)
            members += [head, spouse]
            for age in self._child_ages(mother.age, min(self.child_count.pick(rng), cap - 2, 4)):
                members.append(self._child(home, age, father, mother))
            if len(members) < min(cap, 6) and rng.random() < 0.15:
                self._grandparent(home, head, members, deceased)
            if 20 <= mother.age <= 40 and rng.random() < 0.015:
                pending_birth = (father, mother)
        elif kind == "single_parent":
            head_sex = "F" if rng.random() < 0.75 else "M"
            head_age = rng.randint(25, 60)
            head = self._person(head_sex, head_age, self.family.pick(rng), self._origin(home), "head",
                                "widowed" if rng.random() < 0.4 else "divorced")  # fmt: skip
            members.append(head)
            father_or_none, mother_or_none = (head, None) if head_sex == "M" else (None, head)
            for age in self._child_ages(head.age, min(rng.randint(1, 3), cap - 1)):
                members.append(self._child(home, age, father_or_none, mother_or_none))
        elif kind == "elderly_couple":
            head_age = rng.randint(60, 88)
            head = self._person("M", head_age, self.family.pick(rng), self._origin(home), "head", "married")
            spouse = self._person("F", max(55, head_age - rng.randint(0, 6)), self.family.pick(rng), self._origin(home),
                                  "spouse", "married")  # fmt: skip
            head.spouse_id, spouse.spouse_id = spouse.id, head.id
            members += [head, spouse]
        else:  # siblings sharing a home, or a lone person when only one is left to make
            family, origin = self.family.pick(rng), self._origin(home)
            head_age = rng.randint(18, 35)
            head = self._person("M" if rng.random() < 0.5 else "F", head_age, family, origin, "head", "single")
            members.append(head)
            for _ in range(min(rng.randint(1, 2), cap - 1)):
                sex = "M" if rng.random() < 0.5 else "F"
                members.append(self._person(sex, max(16, head_age + rng.randint(-5, 5)), family, origin, "sibling",
                                            "single", head.hometown, head.ethnicity, head.religion))  # fmt: skip
        self._emit(home, members, deceased)
        if pending_birth is not None:
            self._pending_birth(home, *pending_birth)
        people = len(members) + len(deceased)
        if rng.random() < people * dem.ENTERPRISES_PER_PERSON:
            self._enterprise(home, members)
        return people

    def _child(self, home: str, age: int, father: Person | None, mother: Person | None) -> Person:
        rng = self.rng
        parent = father or mother
        assert parent is not None
        # a lone mother's child carries her family name or the absent father's
        family = parent.family if father or rng.random() < 0.5 else self.family.pick(rng)
        province = home if rng.random() < 0.95 else self.province.pick(rng)
        child = self._person("M" if rng.random() < 0.52 else "F", age, family, province, "child", "single",
                             parent.hometown, parent.ethnicity, parent.religion)  # fmt: skip
        child.father_id = father.id if father else None
        child.mother_id = mother.id if mother else None
        return child

    def _grandparent(self, home: str, head: Person, members: list[Person], deceased: list[Person]) -> None:
        rng = self.rng
        age = head.age + rng.randint(20, 35)
        if age > 100:
            return
        sex = "F" if rng.random() < 0.6 else "M"
        family = head.family if sex == "M" else self.family.pick(rng)
        grandparent = self._person(sex, age, family, self._origin(home), "parent", "widowed", head.hometown,
                                   head.ethnicity, head.religion)  # fmt: skip
        if sex == "M":
            head.father_id = grandparent.id
        else:
            head.mother_id = grandparent.id
        if age >= 75 and rng.random() < 0.1:
            grandparent.death = dt.date.fromordinal(self.as_of_ord - rng.randint(30, 1500))
            deceased.append(grandparent)
        else:
            members.append(grandparent)

    # --- rows -----------------------------------------------------------------------------------------------------

    def _emit(self, home: str, members: list[Person], deceased: list[Person]) -> None:
        serial = self.household_serials.get(home, 0) + 1
        self.household_serials[home] = serial
        household_id = f"HK{home}{serial:09d}"
        address = self._address(home)
        self.put_household((household_id, members[0].id, address, home))
        for person in members:
            self._emit_person(person, household_id, address, home)
        for person in deceased:
            self._emit_person(person, None, address, home)

    def _emit_person(self, p: Person, household_id: str | None, address: str, home: str) -> None:
        rng = self.rng
        birth_iso = p.birth_iso
        old_id = f"{self.old_ids.next():09d}" if p.birth.year < 2002 and rng.random() < 0.7 else None
        issue = issue_place = expiry = None
        if p.age >= 14:
            start = max(CARD_START, dt.date.fromisoformat(_anniversary(birth_iso, 14)).toordinal())
            issue_ord = rng.randint(start, self.as_of_ord) if start < self.as_of_ord else self.as_of_ord
            issue, issue_place = _iso(issue_ord), voc.CARD_ISSUER
            for milestone in CARD_MILESTONES:
                day = _anniversary(birth_iso, milestone)
                if day > issue:  # ISO dates order as strings
                    expiry = day
                    break
        adult = p.age >= 16 and p.death is None
        phone = f"0{rng.choice(voc.PHONE_PREFIXES)}{rng.below(10_000_000):07d}" if adult and rng.random() < 0.85 \
            else None
        email = None
        if adult and p.age <= 50 and rng.random() < 0.3:
            email = f"{fold(p.full_name).replace(' ', '.')}{rng.below(1000)}@mail.example.vn"
        death_iso = p.death.isoformat() if p.death else None
        self.put_person((
            p.id, p.full_name, None, birth_iso, p.sex, self._place(p.province), p.province, p.hometown, p.ethnicity,
            p.religion, "VN", self.blood.pick(rng), old_id, issue, issue_place, expiry, p.father_id, p.mother_id,
            p.spouse_id, p.marital, household_id, p.relation if household_id else None, death_iso, phone, email,
            1 if rng.random() < 0.002 else 0, 0,
        ))  # fmt: skip
        self._residence(p, address, home)
        if p.death is None and (p.age < 6 or rng.random() < dem.INSURED_SHARE):
            self._insure(p, home)

    def _residence(self, p: Person, address: str, home: str) -> None:
        rng = self.rng
        birth_ord = p.birth.toordinal()
        # from roughly the 18th birthday; the exact day does not matter for a residence record
        since = birth_ord if p.age < 18 or p.relation == "child" else rng.randint(birth_ord + 6575, self.as_of_ord)
        if p.age >= 18 and since > birth_ord and rng.random() < 0.1:
            before = rng.randint(birth_ord, since - 1)
            self.put_residence((p.id, "permanent", self._address(p.province), p.province, _iso(before),
                                               _iso(since - 1)))  # fmt: skip
        until = p.death.isoformat() if p.death else None
        self.put_residence((p.id, "permanent", address, home, _iso(since), until))
        if p.death is None and 18 <= p.age <= 45 and rng.random() < 0.06:
            away = self.migration.pick(rng)
            moved = _iso(rng.randint(max(since, self.as_of_ord - 1100), self.as_of_ord))
            elsewhere = self._address(away)
            self.put_residence((p.id, "temporary", elsewhere, away, moved, None))
            self.put_residence((p.id, "current", elsewhere, away, moved, None))

    def _insure(self, p: Person, home: str) -> None:
        rng = self.rng
        hi2 = HI_PROVINCE_CODES[home]
        si_number = f"{hi2}{self.si_serials.next(hi2):08d}"
        if p.age < 6:
            category = CHILD_CATEGORY
            # valid until the day before the 6th birthday
            valid_from = p.birth_iso
            valid_to = _iso(dt.date.fromisoformat(_anniversary(p.birth_iso, 6)).toordinal() - 1)
        else:
            stage = "school" if p.age < 18 else "young" if p.age < 23 else "working" if p.age < 60 else "retired"
            category = self.cards[stage].pick(rng)
            valid_from = max(p.birth_iso, self.year_start)
            valid_to = self.year_end
        level = CATEGORIES[category]
        code = f"{category}{level}{hi2}{si_number}"
        facility_code, facility_name = rng.choice(self.facilities[home])
        self.put_insured((si_number, p.id, p.full_name, p.birth_iso, home, 0))
        self.put_card((code, si_number, category, level, home, valid_from, valid_to, facility_code,
                                         facility_name, 0))  # fmt: skip
        if p.age < 6:
            self._birth(p, code)

    def _next_birth_id(self, province: str) -> str:
        serial = self.birth_serials.get(province, 0) + 1
        self.birth_serials[province] = serial
        return f"KS{province}{serial:09d}"

    def _registered_at(self, birth_ord: int) -> str:
        rng = self.rng
        day = min(birth_ord + rng.randint(1, 60), self.as_of_ord)
        return f"{_iso(day)} {rng.randint(7, 16):02d}:{rng.below(60):02d}:{rng.below(60):02d}.000000"

    def _birth(self, child: Person, card_code: str) -> None:
        self.put_birth((
            self._next_birth_id(child.province), child.province, child.full_name, child.sex, child.birth_iso,
            self._place(child.province), child.father_id, child.mother_id, self._registered_at(child.birth.toordinal()),
            child.id, card_code, 0,
        ))  # fmt: skip

    def _pending_birth(self, home: str, father: Person, mother: Person) -> None:
        """A newborn registered for birth but not yet given a personal ID or card: the one-go procedure's input."""
        rng = self.rng
        sex = "M" if rng.random() < 0.52 else "F"
        birth_ord = self.as_of_ord - rng.randint(1, 20)
        self.put_birth((
            self._next_birth_id(home), home, self._name(sex, father.family), sex, _iso(birth_ord), self._place(home),
            father.id, mother.id, self._registered_at(birth_ord), None, None, 0,
        ))  # fmt: skip

    def _enterprise(self, home: str, members: list[Person]) -> None:
        rng = self.rng
        adults = [p for p in members if 22 <= p.age <= 70]
        if not adults:
            return
        rep = rng.choice(adults)
        province = home if rng.random() < 0.8 else self.migration.pick(rng)
        hi2 = HI_PROVINCE_CODES[province]
        code = None
        while code is None:
            first9 = f"{hi2}{self.enterprise_serials.next(hi2):07d}"
            digit = enterprise_code.check_digit(first9)
            code = None if digit is None else f"{first9}{digit}"
        form = self.enterprise_form.pick(rng)
        name = f"{form} {rng.choice(voc.TRADES)} {rng.choice(voc.BRAND_WORDS)} {rng.choice(voc.VILLAGE_NAMES)}"
        status = self.legal_status.pick(rng)
        earliest = max(dt.date(1995, 1, 1).toordinal(), _add_years(rep.birth, 18).toordinal())
        registered = rng.randint(earliest, self.as_of_ord)
        capital = int(10 ** rng.uniform(8.5, 11.5)) // 1_000_000 * 1_000_000
        self.put_enterprise((code, None, name, fold(name), status, self._address(province), province,
                                           rep.full_name, rep.id, "VN", capital, _iso(registered), 0))  # fmt: skip
        self._owners(code, form, rep, adults)
        if rng.random() < dem.BRANCH_SHARE:
            for number in range(1, rng.randint(1, 3) + 1):
                where = province if rng.random() < 0.5 else self.province.pick(rng)
                head = rng.choice(adults)
                branch_name = f"{name} - Chi nhánh {PROVINCES[where]} {number}"
                self.put_enterprise((
                    f"{code}-{number:03d}", code, branch_name, fold(branch_name), status, self._address(where), where,
                    head.full_name, head.id, "VN", 0, _iso(rng.randint(registered, self.as_of_ord)), 0,
                ))  # fmt: skip
        self.recent_enterprises.append((code, name))

    def _owners(self, code: str, form: str, rep: Person, adults: list[Person]) -> None:
        rng = self.rng
        if form in ("Doanh nghiệp tư nhân", "Công ty TNHH Một thành viên"):
            self.put_owner((code, rep.full_name, rep.id, None, 100.0))
            return
        holders: list[tuple[str, str | None, str | None]] = [(rep.full_name, rep.id, None)]
        holders += [(p.full_name, p.id, None) for p in adults if p is not rep][:2]
        if self.recent_enterprises and (len(holders) == 1 or rng.random() < 0.2):
            other_code, other_name = rng.choice(self.recent_enterprises)
            holders.append((other_name, None, other_code))
        cuts = sorted(rng.sample(range(1, 10_000), len(holders) - 1)) if len(holders) > 1 else []
        bounds = [0, *cuts, 10_000]
        for (holder, personal, enterprise), low, high in zip(holders, bounds, bounds[1:], strict=False):
            self.put_owner((code, holder, personal, enterprise, (high - low) / 100))

    def _bind_appenders(self) -> None:
        """Fresh row buffers, with their append methods bound once (the hot path calls them ~5 times a person)."""
        self.rows = {name: [] for name in COLUMNS}
        rows = self.rows
        self.put_person = rows["population.persons"].append
        self.put_household = rows["population.households"].append
        self.put_residence = rows["population.residence"].append
        self.put_enterprise = rows["business.enterprises"].append
        self.put_owner = rows["business.owners"].append
        self.put_insured = rows["insurance.insured"].append
        self.put_card = rows["insurance.hi_cards"].append
        self.put_birth = rows["civil_status.births"].append

    @property
    def pending(self) -> int:
        return sum(len(rows) for rows in self.rows.values())

    def take_rows(self) -> dict[str, list[Row]]:
        """Hand the buffered rows over to the loader and start new buffers."""
        rows = self.rows
        self._bind_appenders()
        return rows

