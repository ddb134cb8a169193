"""A deterministic JSON-extraction dataset: varied sentences, one unambiguous JSON per prompt.

Several schemas (not only name/date/amount), dates in several written forms normalised to ISO,
amounts with currency symbols and thousands separators, distractor numbers. The held-out test
split draws names and items from pools the train split never sees.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path

SCHEMAS: dict[str, dict[str, str]] = {
    "payment": {"name": "string", "date": "string", "amount": "number"},
    "booking": {"guest": "string", "check_in": "string", "nights": "integer"},
    "order": {"item": "string", "quantity": "integer", "unit_price": "number"},
    "contact": {"person": "string", "city": "string", "age": "integer"},
}

FIRST = [
    "Alex",
    "Maria",
    "Wei",
    "Fatima",
    "John",
    "Priya",
    "Lucas",
    "Sofia",
    "Kenji",
    "Amara",
    "Omar",
    "Elena",
    "Mateo",
    "Chloe",
    "Ivan",
    "Zara",
    "Noah",
    "Leila",
    "Tom",
    "Ana",
]
LAST = [
    "Chen",
    "Garcia",
    "Smith",
    "Khan",
    "Muller",
    "Okafor",
    "Rossi",
    "Tanaka",
    "Silva",
    "Novak",
    "Haddad",
    "Larsen",
    "Dubois",
    "Kowalski",
    "Ivanova",
    "Brown",
    "Nguyen",
    "Costa",
    "Ali",
    "Berg",
]
TEST_FIRST = ["Grace", "Hugo", "Ines", "Jonas", "Keiko", "Liam", "Mina", "Nils", "Olga", "Pablo"]
TEST_LAST = ["Adams", "Baker", "Cruz", "Diaz", "Evans", "Fischer", "Gomez", "Holm", "Ito", "Jensen"]
ITEMS = [
    "desk lamp",
    "usb cable",
    "notebook",
    "coffee mug",
    "keyboard",
    "backpack",
    "water bottle",
    "monitor stand",
    "headphones",
    "phone case",
    "desk chair",
    "printer paper",
]
TEST_ITEMS = ["webcam", "stapler", "mouse pad", "tea kettle", "bike light", "yoga mat"]
CITIES = ["Lisbon", "Toronto", "Osaka", "Nairobi", "Berlin", "Austin", "Lima", "Oslo", "Seoul", "Cairo"]
TEST_CITIES = ["Dublin", "Quito", "Hanoi", "Perth", "Zagreb"]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


def _date(rng: random.Random) -> tuple[str, str]:
    d = dt.date(2023, 1, 1) + dt.timedelta(days=rng.randrange(1100))
    month = MONTHS[d.month - 1]
    forms = [
        d.isoformat(),
        f"{month} {d.day}, {d.year}",
        f"{d.day} {month} {d.year}",
        f"{month[:3]} {d.day}, {d.year}",
        f"{d.year}/{d.month:02d}/{d.day:02d}",
    ]
    return rng.choice(forms), d.isoformat()


def _money(rng: random.Random, big: bool = False) -> tuple[str, float]:
    cents = rng.randrange(100, 500000 if big else 30000)
    value = cents / 100
    whole, frac = divmod(cents, 100)
    symbol = rng.choice(["$", "€", "£", "USD ", "EUR "])
    text = f"{symbol}{whole:,}.{frac:02d}" if rng.random() < 0.7 else f"{symbol}{whole:,}"
    if not text.endswith(f".{frac:02d}"):
        value = float(whole)
    return text, value


def _payment(rng, names):
    name = f"{rng.choice(names[0])} {rng.choice(names[1])}"
    date_text, date = _date(rng)
    money_text, amount = _money(rng, big=True)
    noise = rng.randrange(2, 99)
    text = rng.choice(
        [
            f"Paid {name} on {date_text} {money_text} for lunch.",
            f"On {date_text}, {name} received {money_text} (invoice {noise}).",
            f"Transfer of {money_text} to {name}, dated {date_text}, ref {noise}{noise}.",
            f"{name} was reimbursed {money_text} on {date_text} for {noise} taxi rides.",
        ]
    )
    return text, {"name": name, "date": date, "amount": amount}


def _booking(rng, names):
    guest = f"{rng.choice(names[0])} {rng.choice(names[1])}"
    date_text, date = _date(rng)
    nights = rng.randrange(1, 15)
    room = rng.randrange(100, 999)
    text = rng.choice(
        [
            f"{guest} booked room {room} for {nights} nights starting {date_text}.",
            f"Reservation: {guest}, check-in {date_text}, {nights} night(s), {room} Main St.",
            f"Check-in on {date_text} for {guest}; staying {nights} nights with {room % 4 + 1} guests.",
        ]
    )
    return text, {"guest": guest, "check_in": date, "nights": nights}


def _order(rng, items):
    item = rng.choice(items)
    quantity = rng.randrange(1, 40)
    price_text, price = _money(rng)
    order_no = rng.randrange(1000, 99999)
    text = rng.choice(
        [
            f"Order #{order_no}: {quantity} x {item} at {price_text} each.",
            f"Please ship {quantity} units of {item}, unit price {price_text}, to dock {order_no % 9}.",
            f"We bought {item} ({quantity} pcs) for {price_text} per piece on order {order_no}.",
        ]
    )
    return text, {"item": item, "quantity": quantity, "unit_price": price}


def _contact(rng, names, cities):
    person = f"{rng.choice(names[0])} {rng.choice(names[1])}"
    city = rng.choice(cities)
    age = rng.randrange(18, 90)
    floor = rng.randrange(1, 30)
    text = rng.choice(
        [
            f"{person}, {age}, lives in {city} on floor {floor}.",
            f"Meet {person} from {city}: {age} years old, {floor} years at the company.",
            f"Contact card - {person} ({city}), age {age}, desk {floor}.",
        ]
    )
    return text, {"person": person, "city": city, "age": age}


def prompt_for(schema: str, text: str) -> str:
    keys = ", ".join(SCHEMAS[schema])
    return f"Extract fields. Output ONLY valid JSON with keys {keys}.\nText: {text}"


def completion_for(answer: dict) -> str:
    return json.dumps(answer, separators=(",", ":"), ensure_ascii=False)


def example(rng: random.Random, held_out: bool) -> dict:
    names = (TEST_FIRST, TEST_LAST) if held_out else (FIRST, LAST)
    schema = rng.choice(sorted(SCHEMAS))
    if schema == "payment":
        text, answer = _payment(rng, names)
    elif schema == "booking":
        text, answer = _booking(rng, names)
    elif schema == "order":
        text, answer = _order(rng, TEST_ITEMS if held_out else ITEMS)
    else:
        text, answer = _contact(rng, names, TEST_CITIES if held_out else CITIES)
    return {
        "schema": schema,
        "prompt": prompt_for(schema, text),
        "completion": completion_for(answer),
        "answer": json.dumps(answer),
    }


def generate(n: int = 5000, seed: int = 0, eval_frac: float = 0.1, test_frac: float = 0.1) -> dict:
    """Splits train / eval / test; test uses held-out names, items and cities."""
    if not 2000 <= n <= 20000:
        raise ValueError(f"n must be between 2000 and 20000 (got {n})")
    rng = random.Random(seed)
    n_test, n_eval = int(n * test_frac), int(n * eval_frac)
    splits = {
        "train": [example(rng, False) for _ in range(n - n_test - n_eval)],
        "eval": [example(rng, False) for _ in range(n_eval)],
        "test": [example(rng, True) for _ in range(n_test)],
    }
    return splits


def save(splits: dict, out: Path) -> Path:
    """JSONL per split, and a `datasets` DatasetDict beside them."""
    from datasets import Dataset, DatasetDict

    out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        with open(out / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    DatasetDict({k: Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(str(out / "hf"))
    return out
