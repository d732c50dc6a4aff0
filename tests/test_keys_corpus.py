"""``repo_key`` against every real Binder URL collected in ``shared/data``.

The corpus (``urls.tsv``, ``urls_unattributed.tsv``) holds launch links as written in
READMEs and docs. Hubs under a path prefix (``/binder/v2/...``, ``/services/binder/v2/...``)
are handled here by cutting the path at its first ``/v2/``, ``/build/`` or ``/repo/``
segment: ``repo_key`` itself does not know about prefixes.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from federation_redirect.keys import repo_key

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FILES = ("urls.tsv", "urls_unattributed.tsv")

if not all((DATA / name).is_file() for name in FILES):
    pytest.skip(
        f"URL corpus not found: expected {' and '.join(FILES)} in {DATA}",
        allow_module_level=True,
    )

#: kinds whose URLs a BinderHub would launch (or build), with the provider they launch
KEYED_KINDS = frozenset({"launch", "build_api", "legacy_v1_repo"})
#: kinds that only have to survive: templates with placeholders, binderhub test hosts
TOLERATED_KINDS = frozenset({"placeholder_template", "synthetic_test_host"})
#: running-session URLs on a member's JupyterHub: never a launch
SESSION_KIND = "session_url_not_launch"

_ROUTE = re.compile(r"/(?:v2|build|repo)/")


@dataclass(frozen=True)
class Row:
    where: str  # "<file>:<line>"
    url: str
    kind: str
    provider: str


def _load() -> list[Row]:
    rows = []
    for name in FILES:
        with (DATA / name).open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
            for line, rec in enumerate(reader, start=2):
                rows.append(Row(f"{name}:{line}", rec["url"], rec["kind"], rec["provider"]))
    return rows


ROWS = _load()


def raw_path(url: str) -> str:
    """Everything after the host, escapes, query and fragment untouched."""
    rest = url.partition("://")[2]
    slash = rest.find("/")
    return rest[slash:] if slash >= 0 else "/"


def launch_path(url: str) -> str:
    """``raw_path`` with any hub path prefix (``/binder``, ``/services/binder``) cut off."""
    path = raw_path(url)
    match = _ROUTE.search(re.split(r"[?#]", path, maxsplit=1)[0])
    return path[match.start() :] if match else path


def expected_identity(path: str) -> tuple[str, str]:
    """The repository a launch path names, derived by hand independently of ``repo_key``.

    Returns ``(provider, identity)``; ``identity`` is only compared between corpus rows.
    """
    segments = urlsplit(path).path.split("/")
    if segments[1] == "repo":
        provider, spec = "gh", segments[2:]
    else:
        provider, spec = segments[2].lower(), segments[3:]
    if provider in {"gh", "gist"}:
        owner = spec[0]
        repo = spec[1] if len(spec) > 1 else ""
        repo = re.sub(r"\.git$", "", repo, flags=re.IGNORECASE)
        return provider, "/".join(p for p in (owner, repo) if p).lower()
    if provider in {"gl", "git"}:
        return provider, re.sub(r"(\.git)?/*$", "", unquote(spec[0]).lower())
    if provider == "hydroshare":
        match = re.search(r"[0-9a-f]{32}", unquote("/".join(spec)).lower())
        assert match is not None
        return provider, match.group()
    return provider, unquote("/".join(spec)).lower().strip("/")


KEYED = [r for r in ROWS if r.kind in KEYED_KINDS]


def test_corpus_kinds_are_all_understood() -> None:
    kinds = {r.kind for r in ROWS}
    assert kinds <= KEYED_KINDS | TOLERATED_KINDS | {SESSION_KIND}, kinds
    assert len(KEYED) > 700


@pytest.mark.parametrize("row", ROWS, ids=[r.where for r in ROWS])
def test_corpus_url_never_raises(row: Row) -> None:
    for path in (raw_path(row.url), launch_path(row.url)):
        key = repo_key(path)
        assert key is None or isinstance(key, str)


@pytest.mark.parametrize("row", KEYED, ids=[r.where for r in KEYED])
def test_corpus_launch_url_is_keyed_under_its_provider(row: Row) -> None:
    path = launch_path(row.url)
    key = repo_key(path)
    assert key is not None, path
    provider = "gh" if row.kind == "legacy_v1_repo" else row.provider
    assert key.partition(":")[0] == provider
    # the query and fragment never matter
    assert repo_key(urlsplit(path).path) == key


GH_ROWS = [r for r in KEYED if r.kind == "legacy_v1_repo" or r.provider == "gh"]


@pytest.mark.parametrize("row", GH_ROWS, ids=[r.where for r in GH_ROWS])
def test_corpus_github_key_is_lowercased_owner_repo_without_dot_git(row: Row) -> None:
    path = launch_path(row.url)
    provider, identity = expected_identity(path)
    assert provider == "gh"
    assert repo_key(path) == f"gh:{identity}"


def test_corpus_urls_naming_one_repository_share_one_key_and_no_other() -> None:
    keys_by_identity: dict[tuple[str, str], set[str | None]] = defaultdict(set)
    spellings: dict[tuple[str, str], set[str]] = defaultdict(set)
    for row in KEYED:
        path = launch_path(row.url)
        identity = expected_identity(path)
        keys_by_identity[identity].add(repo_key(path))
        spellings[identity].add(path)
    split = {i: k for i, k in keys_by_identity.items() if len(k) != 1}
    assert not split, f"one repository, several keys: {split}"
    keys = [next(iter(k)) for k in keys_by_identity.values()]
    assert len(set(keys)) == len(keys), "two repositories share a key"
    # the corpus really exercises this: many repositories are linked in several ways
    assert sum(len(s) > 1 for s in spellings.values()) >= 50


# Variants found in the corpus, grouped by hand. Each group is one repository.
KNOWN_VARIANTS: dict[str, list[str]] = {
    "gh:slicer/slicernotebooks": [  # owner case differs between links in one README
        "https://mybinder.org/v2/gh/Slicer/SlicerNotebooks/master?filepath=03_Image_Processing_using_SimpleITK.ipynb",
        "https://mybinder.org/v2/gh/slicer/SlicerNotebooks/master",
    ],
    "gh:widdowquinn/teaching-data-visualisation": [  # legacy v1 and v2
        "http://mybinder.org/repo/widdowquinn/Teaching-Data-Visualisation",
        "https://mybinder.org/v2/gh/widdowquinn/Teaching-Data-Visualisation/master?filepath=index.ipynb",
    ],
    "gh:janlahmann/qiskit-documentation": [  # /build/ API, /v2/ on two hosts
        "https://mybinder.org/build/gh/JanLahmann/Qiskit-documentation/main",
        "https://2i2c.mybinder.org/v2/gh/JanLahmann/Qiskit-documentation/main",
        "https://mybinder.org/v2/gh/JanLahmann/Qiskit-documentation/main?filepath=docs/guides",
    ],
    "gh:ploomber/binder-env": [  # no ref at all, and a double-encoded nbgitpuller query
        "https://binder.ploomber.io/v2/gh/ploomber/binder-env",
        "https://binder.ploomber.io/v2/gh/ploomber/binder-env/main?urlpath=git-pull%3Frepo%3Dhttps%253A%252F%252Fgithub.com%252Fploomber%252Fprojects%26urlpath%3Dlab%252Ftree%252Fprojects%252Fcookbook/grid%252FREADME.ipynb%26branch%3Dmaster",
    ],
    "gh:glam-workbench/recordsearch": [  # HEAD, master, master/ (trailing slash on the ref)
        "https://mybinder.org/v2/gh/GLAM-Workbench/recordsearch/HEAD?urlpath=lab/tree/index.ipynb",
        "https://mybinder.org/v2/gh/GLAM-Workbench/recordsearch/master/?urlpath=lab/tree/index.md",
        "https://mybinder.org/v2/gh/GLAM-Workbench/recordsearch/master?urlpath=voila/render/Find_cables.ipynb",
    ],
    "gh:bitnik/covid19_in_binder": [  # the two GESIS path prefixes
        "https://notebooks.gesis.org/binder/v2/gh/bitnik/covid19_in_binder/master?filepath=analysis.ipynb",
        "https://notebooks.gesis.org/services/binder/v2/gh/bitnik/covid19_in_binder/master?filepath=analysis.ipynb",
    ],
    "gh:seemee/algoxtools": [  # two commit SHAs as refs
        "https://gesis.mybinder.org/binder/v2/gh/Seemee/algoxtools/06e64f70dbade600be6a30b57424ee7fc5a68bb1",
        "https://gesis.mybinder.org/binder/v2/gh/Seemee/algoxtools/d7654818833f60dc637c7b233de0ad379506a080",
    ],
    "gist:executablebooks/thebe-binder-base": [
        "https://binder.curvenote.dev/build/gist/executablebooks/thebe-binder-base/HEAD",
        "https://binder.curvenote.dev/v2/gist/executablebooks/thebe-binder-base/main",
    ],
    "gl:cracklet%2Ftutorials": [
        "https://mybinder.org/v2/gl/cracklet%2Ftutorials/2cbe12707784f451c14ffe401e95ab5d6b415b8b?filepath=rate-and-state%2Frate_and_state.ipynb",
        "https://mybinder.org/v2/gl/cracklet%2Ftutorials/72d3a17295b091c74cd57fc5647e9e91dcfc5e51?filepath=supershear%2Fsupershear.ipynb",
    ],
    "gl:klb2%2Fris-phase-hopping": [
        "https://mybinder.org/v2/gl/klb2%2Fris-phase-hopping/spawc",
        "https://mybinder.org/v2/gl/klb2%2Fris-phase-hopping/spawc?filepath=RIS%20Simulation.ipynb",
    ],
    "git:executablebooks%2Fthebe-binder-base": [  # a "clone URL" that is not a URL
        "https://binder.curvenote.dev/build/git/executablebooks%2Fthebe-binder-base/HEAD",
        "https://binder.curvenote.dev/v2/git/executablebooks%2Fthebe-binder-base/main",
    ],
    "git:https%3A%2F%2Fgithub.com%2Fcs-si%2Feodag": [
        "https://mybinder.org/v2/git/https%3A%2F%2Fgithub.com%2FCS-SI%2Feodag.git/master?filepath=docs%2Fnotebooks%2Fintro_notebooks.ipynb",
        "https://mybinder.org/v2/git/https%3A%2F%2Fgithub.com%2FCS-SI%2Feodag.git/master?filepath=examples%2Ftuto_basics.ipynb",
    ],
}


@pytest.mark.parametrize("key", sorted(KNOWN_VARIANTS))
def test_corpus_variants_of_one_repository_share_its_key(key: str) -> None:
    corpus = {r.url for r in ROWS}
    for url in KNOWN_VARIANTS[key]:
        assert url in corpus, f"not in the corpus any more: {url}"
        assert repo_key(launch_path(url)) == key, url


@pytest.mark.parametrize(
    ("url", "key"),
    [
        (
            "https://mybinder.org/v2/hydroshare/https%3A%2F%2Fwww.hydroshare.org%2Fresource%2F4cac25933f6448409cab97b293129b4f/",
            "hydroshare:4cac25933f6448409cab97b293129b4f",
        ),
        ("https://mybinder.org/v2/dataverse/10.18130/V3/AAFY8N/", "dataverse:10.18130/v3/aafy8n"),
        ("https://mybinder.org/v2/zenodo/10.5281/zenodo.3626175", "zenodo:10.5281/zenodo.3626175"),
        ("https://mybinder.org/v2/zenodo/19635623/?filepath=proof.ipynb", "zenodo:19635623"),
        (
            "https://mybinder.org/v2/gist/SimonBoothroyd/2405bd7d15c2908227ad42bfe3a79064#file-how-to-build-a-force-field-ipynb/HEAD?filepath=how-to-build-a-force-field.ipynb",
            "gist:simonboothroyd/2405bd7d15c2908227ad42bfe3a79064",
        ),
        ("https://mybinder.org/v2/gh/GLAM-Workbench/", "gh:glam-workbench"),
        (
            "https://mybinder.org/v2/gl/https%3A%2F%2Fgitlab.com%2Fgenomorro%2Ftic-iner/registro-io",
            "gl:https%3A%2F%2Fgitlab.com%2Fgenomorro%2Ftic-iner",
        ),
        (
            "https://mybinder.org/v2/git/https%3A%2F%2Fgitlab.irstea.fr%2FHYCAR-Hydro%2Fevalhyd%2Fevalhyd-notebooks%2Fpython/HEAD?filepath=evalhyd-python.ipynb",
            "git:https%3A%2F%2Fgitlab.irstea.fr%2Fhycar-hydro%2Fevalhyd%2Fevalhyd-notebooks%2Fpython",
        ),
    ],
    ids=[
        "hydroshare-escaped-url",
        "dataverse-doi-trailing-slash",
        "zenodo-doi-no-slash",
        "zenodo-bare-record-id",
        "gist-fragment-before-ref",
        "gh-owner-only",
        "gl-full-url-as-namespace",
        "git-deep-gitlab-path",
    ],
)
def test_corpus_rare_shapes_get_the_expected_key(url: str, key: str) -> None:
    assert url in {r.url for r in ROWS}
    assert repo_key(launch_path(url)) == key


SESSIONS = [r for r in ROWS if r.kind == SESSION_KIND]


@pytest.mark.parametrize("row", SESSIONS, ids=[r.where for r in SESSIONS])
def test_corpus_session_urls_are_not_launches(row: Row) -> None:
    assert repo_key(raw_path(row.url)) is None


def test_corpus_prefix_cutting_is_a_test_heuristic_not_a_library_feature() -> None:
    # A session URL whose notebook path contains "/build/": cutting at the first route
    # segment would turn it into a launch of provider "jupyter". The library never sees
    # prefixes, so the raw path is correctly not a launch.
    url = next(r.url for r in SESSIONS if "/notebooks/build/" in r.url)
    assert repo_key(raw_path(url)) is None
    assert repo_key(launch_path(url)) == "jupyter:getting_started/10min.ipynb"
