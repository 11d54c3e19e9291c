"""The data generator: every ID valid, every reference resolving, realistic spreads, determinism by seed, on SQLite
and PostgreSQL (skipped with a reason when no server answers at 127.0.0.1:5432)."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import sqlalchemy as sa

from connectors.datagen import AS_OF, GenerateError, generate, postgres_urls, sqlite_urls
from connectors.rules import enterprise_code, insurance_codes, legal_status, personal_id, provinces
from connectors.rules.vietnamese import fold

PEOPLE = 3000
PG_BASE = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TABLES = {
    "population": ("persons", "households", "residence"),
    "business": ("enterprises", "owners"),
    "insurance": ("insured", "hi_cards"),
    "civil_status": ("births",),
}


def _rows(url: str, table: str) -> list[dict]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            meta = sa.MetaData()
            t = sa.Table(table, meta, autoload_with=conn)
            order = [c for c in t.primary_key.columns]
            return [dict(r._mapping) for r in conn.execute(sa.select(t).order_by(*order))]
    finally:
        engine.dispose()


def _dump(urls: dict[str, str]) -> dict[str, list[dict]]:
    return {f"{db}.{table}": _rows(urls[db], table) for db, tables in TABLES.items() for table in tables}


def _age(born: dt.date) -> int:
    return AS_OF.year - born.year - ((AS_OF.month, AS_OF.day) < (born.month, born.day))


@pytest.fixture(scope="module")
def sqlite_data(tmp_path_factory) -> dict[str, list[dict]]:
    out = tmp_path_factory.mktemp("data")
    calls: list[tuple[int, int]] = []
    result = generate(out, people=PEOPLE, seed=7, progress=lambda done, total: calls.append((done, total)),
                      batch_rows=2000)  # fmt: skip
    assert result.rows["population.persons"] == PEOPLE
    assert calls[-1] == (PEOPLE, PEOPLE) and len(calls) > 2  # progress reported along the way
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(calls))
    return _dump(sqlite_urls(out))


def test_every_person_id_is_valid_and_agrees_with_the_record(sqlite_data):
    for p in sqlite_data["population.persons"]:
        personal_id.check_against(p["id"], p["sex"], p["birth_date"])
        assert p["birth_registration_province"] == p["id"][:3]
        provinces.validate(p["birth_registration_province"])
        assert p["old_id"] is None or (len(p["old_id"]) == 9 and p["old_id"].isdigit())
        assert p["nationality"] == "VN"


def test_population_references_resolve(sqlite_data):
    persons = {p["id"]: p for p in sqlite_data["population.persons"]}
    households = {h["id"]: h for h in sqlite_data["population.households"]}
    members = defaultdict(list)
    for p in persons.values():
        for ref in ("father_id", "mother_id", "spouse_id"):
            if p[ref] is not None:
                assert p[ref] in persons, ref
        if p["spouse_id"]:
            assert persons[p["spouse_id"]]["spouse_id"] == p["id"]
            assert p["marital_status"] == "married"
        if p["father_id"]:
            father = persons[p["father_id"]]
            assert father["sex"] == "M" and father["birth_date"] < p["birth_date"]
        if p["mother_id"]:
            mother = persons[p["mother_id"]]
            assert mother["sex"] == "F" and _age(mother["birth_date"]) - _age(p["birth_date"]) >= 18
        if p["household_id"] is not None:
            assert p["household_id"] in households
            members[p["household_id"]].append(p)
        else:
            assert p["death_date"] is not None  # only the deceased have left their household
    for h in households.values():
        head = persons[h["head_id"]]
        assert head["household_id"] == h["id"] and head["relation_to_head"] == "head"
        assert [m["relation_to_head"] for m in members[h["id"]]].count("head") == 1
        assert 1 <= len(members[h["id"]]) <= 6
        provinces.validate(h["province_code"])
    sizes = Counter(len(m) for m in members.values())
    assert sizes[1] <= 1  # only the very last household may be a lone person
    assert {2, 3, 4, 5} <= set(sizes)
    for r in sqlite_data["population.residence"]:
        assert r["person_id"] in persons
        assert r["kind"] in ("permanent", "temporary", "current")
        assert r["valid_to"] is None or r["valid_to"] >= r["valid_from"]
    current_permanent = Counter(r["person_id"] for r in sqlite_data["population.residence"]
                                if r["kind"] == "permanent" and r["valid_to"] is None)  # fmt: skip
    living = [p for p in persons.values() if p["death_date"] is None]
    assert all(current_permanent[p["id"]] == 1 for p in living)


def test_business_registry_is_valid_and_resolves(sqlite_data):
    persons = {p["id"]: p for p in sqlite_data["population.persons"]}
    enterprises = {e["code"]: e for e in sqlite_data["business.enterprises"]}
    assert PEOPLE // 200 <= sum(1 for e in enterprises.values() if e["parent_code"] is None) <= PEOPLE // 50
    assert any(e["parent_code"] for e in enterprises.values()), "some enterprises have branches"
    for e in enterprises.values():
        enterprise_code.validate(e["code"])
        assert enterprise_code.parent_of(e["code"]) == e["parent_code"]
        if e["parent_code"]:
            assert e["parent_code"] in enterprises
        assert e["legal_rep_id"] in persons
        assert persons[e["legal_rep_id"]]["full_name"] == e["legal_rep_name"]
        legal_status.validate(e["legal_status"])
        assert e["name_folded"] == fold(e["name"])
        assert e["charter_capital"] >= 0 and e["charter_capital"] % 1_000_000 == 0
    shares: dict[str, float] = defaultdict(float)
    for o in sqlite_data["business.owners"]:
        assert o["enterprise_code"] in enterprises
        assert (o["personal_id"] is None) != (o["owner_enterprise_code"] is None)
        if o["personal_id"]:
            assert o["personal_id"] in persons
        else:
            assert o["owner_enterprise_code"] in enterprises
        shares[o["enterprise_code"]] += o["share"]
    parents = {c for c, e in enterprises.items() if e["parent_code"] is None}
    assert set(shares) == parents
    assert all(abs(total - 100.0) < 1e-6 for total in shares.values())


def test_insurance_is_valid_and_resolves(sqlite_data):
    persons = {p["id"]: p for p in sqlite_data["population.persons"]}
    insured = {i["si_number"]: i for i in sqlite_data["insurance.insured"]}
    cards_by_si = {c["si_number"]: c for c in sqlite_data["insurance.hi_cards"]}
    assert 0.85 <= len(insured) / PEOPLE <= 0.95
    for i in insured.values():
        insurance_codes.validate_si_number(i["si_number"])
        p = persons[i["person_id"]]
        assert (p["full_name"], p["birth_date"], p["death_date"]) == (i["full_name"], i["birth_date"], None)
    assert len({i["person_id"] for i in insured.values()}) == len(insured)
    for c in sqlite_data["insurance.hi_cards"]:
        parts = insurance_codes.parse_card(c["code"])
        assert c["si_number"] in insured
        assert (parts.category, parts.benefit_level, parts.province_code, parts.si_number) == (
            c["category"], c["benefit_level"], c["province_code"], c["si_number"])  # fmt: skip
        assert c["valid_to"] is None or c["valid_to"] >= c["valid_from"]
        assert c["primary_care_facility_code"][:2] == insurance_codes.HI_PROVINCE_CODES[c["province_code"]]
    insured_people = {i["person_id"]: i["si_number"] for i in insured.values()}
    children = [p for p in persons.values() if _age(p["birth_date"]) < 6]
    assert children
    for child in children:
        assert cards_by_si[insured_people[child["id"]]]["category"] == "TE"
    assert all(_age(persons[i["person_id"]]["birth_date"]) < 6
               for i in insured.values() if cards_by_si[i["si_number"]]["category"] == "TE")  # fmt: skip


def test_births_resolve_to_people_and_cards(sqlite_data):
    persons = {p["id"]: p for p in sqlite_data["population.persons"]}
    cards = {c["code"] for c in sqlite_data["insurance.hi_cards"]}
    births = sqlite_data["civil_status.births"]
    registered = [b for b in births if b["personal_id"]]
    pending = [b for b in births if b["personal_id"] is None]
    assert registered
    under_six = {p["id"] for p in persons.values() if _age(p["birth_date"]) < 6}
    assert {b["personal_id"] for b in registered} == under_six
    for b in births:
        provinces.validate(b["province_code"])
        for parent in ("father_id", "mother_id"):
            assert b[parent] is None or b[parent] in persons
        assert b["registered_at"].date() >= b["birth_date"]
    for b in registered:
        child = persons[b["personal_id"]]
        assert (child["full_name"], child["sex"], child["birth_date"]) == (b["child_name"], b["sex"], b["birth_date"])
        assert b["province_code"] == child["birth_registration_province"]
        assert b["hi_card_code"] in cards and b["hi_card_code"].startswith("TE1")
    for b in pending:  # waiting for the one-go procedure: no ID or card yet, both parents known
        assert b["hi_card_code"] is None and b["father_id"] and b["mother_id"]


def test_spreads_look_like_vietnam(sqlite_data):
    persons = sqlite_data["population.persons"]
    family = Counter(p["full_name"].split()[0] for p in persons)
    assert family.most_common(1)[0][0] == "Nguyễn"
    assert 0.25 <= family["Nguyễn"] / len(persons) <= 0.5
    assert sum(1 for p in persons if p["full_name"] != fold(p["full_name"])) / len(persons) > 0.9  # diacritics
    females = [p for p in persons if p["sex"] == "F"]
    assert sum(1 for p in females if " Thị " in p["full_name"]) / len(females) > 0.2
    assert not any(" Thị " in p["full_name"] for p in persons if p["sex"] == "M")
    homes = Counter(h["province_code"] for h in sqlite_data["population.households"])
    assert len(homes) >= 40
    assert {c for c, _ in homes.most_common(3)} & {"001", "079"}  # the two big cities lead
    ages = [_age(p["birth_date"]) for p in persons]
    assert min(ages) == 0 and max(ages) >= 85
    bands = Counter(min(a // 20, 4) for a in ages)
    assert bands[0] > bands[3] > bands[4]  # a pyramid: more young than old


def test_same_seed_same_rows_other_seed_other_rows(sqlite_data, tmp_path):
    generate(tmp_path / "again", people=PEOPLE, seed=7, batch_rows=50_000)  # batch size must not matter
    assert _dump(sqlite_urls(tmp_path / "again")) == sqlite_data
    generate(tmp_path / "forked", people=PEOPLE, seed=7, parallel=True)  # rows built in a child process
    assert _dump(sqlite_urls(tmp_path / "forked")) == sqlite_data
    generate(tmp_path / "other", people=300, seed=8)
    other = _dump(sqlite_urls(tmp_path / "other"))
    assert other["population.persons"][:50] != sqlite_data["population.persons"][:50]


def test_rerun_replaces_earlier_files(tmp_path):
    generate(tmp_path, people=400, seed=1)
    result = generate(tmp_path, people=200, seed=1)
    assert len(_rows(result.urls["population"], "persons")) == 200


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(GenerateError, match="people"):
        generate(tmp_path, people=0)
    with pytest.raises(GenerateError, match="seed"):
        generate(tmp_path, people=10, seed=-1)
    with pytest.raises(GenerateError, match="out_dir"):
        generate(None, people=10)
    with pytest.raises(GenerateError, match="unknown database"):
        generate(tmp_path, people=10, database_urls={"tax": "sqlite://"})
    with pytest.raises(GenerateError, match="postgres"):
        postgres_urls("sqlite:///x.sqlite")
    with pytest.raises(GenerateError, match=r"database_urls\[insurance\]: only sqlite and postgresql"):
        generate(tmp_path, people=10, database_urls={"insurance": "mysql://u@h/db"})
    with pytest.raises(GenerateError, match=r"database_urls\[business\]: not a database URL"):
        generate(tmp_path, people=10, database_urls={"business": "no url"})


def test_a_failing_child_process_is_reported_not_hung(tmp_path):
    with pytest.raises(RuntimeError, match="generating process failed: OperationalError"):
        generate(tmp_path, people=500, parallel=True,
                 database_urls={"business": "postgresql+psycopg://postgres@127.0.0.1:1/none"})  # fmt: skip


def _postgres_up() -> str | None:
    engine = sa.create_engine(PG_BASE, connect_args={"connect_timeout": 2})
    try:
        with engine.connect():
            return None
    except Exception as exc:  # any failure to connect means no server to test against
        return f"no PostgreSQL at {PG_BASE}: {type(exc).__name__}"
    finally:
        engine.dispose()


def test_postgresql_gets_the_same_rows_as_sqlite(tmp_path):
    reason = _postgres_up()
    if reason:
        pytest.skip(reason)
    suffix = uuid.uuid4().hex[:8]
    urls = {name: url.replace(f"search_path%3D{name}", f"search_path%3Dt_{suffix}_{name}")
            for name, url in postgres_urls(PG_BASE).items()}  # fmt: skip
    try:
        generate(database_urls=urls, people=500, seed=3)
        generate(tmp_path, people=500, seed=3)
        pg, lite = _dump(urls), _dump(sqlite_urls(tmp_path))
        for key in lite:
            assert len(pg[key]) == len(lite[key]), key
        strip = lambda rows: [{k: v for k, v in r.items() if k != "registered_at"} for r in rows]  # noqa: E731
        for key in ("population.persons", "business.enterprises", "insurance.hi_cards"):
            assert strip(pg[key]) == strip(lite[key]), key
        assert [b["registered_at"].replace(tzinfo=None) for b in pg["civil_status.births"]] == [
            b["registered_at"] for b in lite["civil_status.births"]]  # fmt: skip
        inspector = sa.inspect(sa.create_engine(urls["population"]))
        assert any(i["column_names"] == ["household_id"] for i in inspector.get_indexes("persons"))
    finally:
        engine = sa.create_engine(PG_BASE)
        with engine.begin() as conn:
            for name in urls:
                conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "t_{suffix}_{name}" CASCADE')
        engine.dispose()


def test_sqlite_urls_name_the_four_files(tmp_path: Path):
    urls = sqlite_urls(tmp_path)
    assert set(urls) == set(TABLES)
    assert urls["population"].endswith("/population.sqlite")
