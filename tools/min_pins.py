"""The oldest releases `make test-min` installs and tests: `name==X.*` for each `name>=X` in settings.ini's
requirements (and the extras named on the command line), so the lower bounds the package declares are verified.
`--check`: fail unless the installed versions match those pins (pip kept the old stack)."""
import configparser, re, sys
from pathlib import Path

def min_pins(extras=()):
    cfg = configparser.ConfigParser(delimiters=['='])
    cfg.read(Path(__file__).resolve().parents[1]/'settings.ini', encoding='utf-8')
    cfg = cfg['DEFAULT']
    pins = {}
    for req in ' '.join(cfg.get(k, '') for k in ['requirements'] + [f'{e}_requirements' for e in extras]).split():
        m = re.fullmatch(r'([A-Za-z0-9_.\-]+)>=([0-9.]+)(?:,<[0-9.]+)?', req)   # an upper cap only for a known break
        if m is None: sys.exit(f"settings.ini: {req!r} has no plain `>=` lower bound for test-min to pin")
        pins[m[1]] = m[2]
    return pins

if __name__ == '__main__':
    check = '--check' in sys.argv
    pins = min_pins([a for a in sys.argv[1:] if a != '--check'])
    if not check:
        for name, v in pins.items(): print(f'{name}=={v}.*')
        sys.exit(0)
    from importlib.metadata import version
    from packaging.specifiers import SpecifierSet
    bad = []
    for name, v in pins.items():
        got = version(name)
        ok = SpecifierSet(f'=={v}.*').contains(got.split('+')[0])
        print(f"  {name:<24} {got:<16} {'ok' if ok else f'NOT the lower bound {v}'}")
        if not ok: bad.append(name)
    if bad: sys.exit(f"test-min: {', '.join(bad)} not at the lower bound settings.ini declares")
