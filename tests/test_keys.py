"""Specification of ``federation_redirect.keys.repo_key``: raw launch path -> repository key."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation_redirect.keys import PROVIDERS, repo_key

HYDRO_ID = "4cac25933f6448409cab97b293129b4f"

# (path, expected key); ids name the behaviour each row pins down.
CASES: list[tuple[str, str | None, str]] = [
    # --- gh ---------------------------------------------------------------------------------
    ("/v2/gh/org/repo/main", "gh:org/repo", "gh-plain"),
    ("/v2/gh/Org/Repo/main", "gh:org/repo", "gh-owner-and-repo-are-lower-cased"),
    ("/v2/gh/org/repo/Master", "gh:org/repo", "gh-ref-case-is-irrelevant"),
    ("/build/gh/org/repo.git/1a2b3c", "gh:org/repo", "gh-build-route-and-dot-git"),
    ("/v2/gh/org/Repo.GIT/main", "gh:org/repo", "gh-dot-git-stripped-case-insensitively"),
    ("/v2/gh/org/repo.git.git/main", "gh:org/repo.git", "gh-only-one-dot-git-stripped"),
    ("/v2/gh/org/.git/main", "gh:org/.git", "gh-bare-dot-git-repo-not-emptied"),
    ("/v2/gh/org/repo/feature/save_world", "gh:org/repo", "gh-ref-with-slash"),
    ("/v2/gh/org/repo/hotfix/squash-bug/", "gh:org/repo", "gh-ref-with-slash-and-trailing-slash"),
    ("/v2/gh/org/repo", "gh:org/repo", "gh-two-part-spec-without-ref"),
    ("/v2/gh/org/repo/", "gh:org/repo", "gh-empty-ref"),
    (
        "/v2/gh/jupyterlab/jupyterlab-demo/try.jupyter.org",
        "gh:jupyterlab/jupyterlab-demo",
        "gh-dotted-ref",
    ),
    ("/v2/gh/Org/", "gh:org", "gh-owner-only-spec-keyed-by-owner"),
    ("/v2/GH/Org/Repo/main", "gh:org/repo", "gh-provider-id-case-insensitive"),
    ("/v2/gh/my%2Dorg/repo%2Ename/main", "gh:my-org/repo.name", "gh-escapes-decoded"),
    ("/v2/gh/a%zz/b/main", "gh:a%zz/b", "gh-invalid-escape-kept"),
    ("/v2/gh/a%252Fb/c/main", "gh:a%2fb/c", "gh-double-escape-decoded-once"),
    ("/v2/gh//repo/main", None, "gh-empty-owner"),
    # --- legacy /repo/ -------------------------------------------------------------------------
    ("/repo/Org/Repo", "gh:org/repo", "legacy-repo"),
    ("/repo/Org/Repo/some/path", "gh:org/repo", "legacy-repo-with-urlpath"),
    ("/repo/org/repo.git/", "gh:org/repo", "legacy-repo-dot-git"),
    ("/repo/org", None, "legacy-repo-without-repo"),
    ("/repo/org/", None, "legacy-repo-empty-repo"),
    ("/repo//repo", None, "legacy-repo-empty-user"),
    # --- gist -------------------------------------------------------------------------------
    (
        "/v2/gist/parente/3675D82EAE802db2c011037033d614a5/master",
        "gist:parente/3675d82eae802db2c011037033d614a5",
        "gist-lower-cased",
    ),
    (
        "/v2/gist/minrk/6d61e5edfa4d2947b0ee8c1be8e79154",
        "gist:minrk/6d61e5edfa4d2947b0ee8c1be8e79154",
        "gist-without-ref",
    ),
    (
        "/v2/gist/https%3A%2F%2Fgist.github.com%2Fjakevdp/256c3ad937af9ec7d4c65a29e5b6d454/HEAD",
        "gist:jakevdp/256c3ad937af9ec7d4c65a29e5b6d454",
        "gist-half-escaped-url-as-user",
    ),
    (
        "/build/gist/executablebooks/thebe-binder-base/HEAD",
        "gist:executablebooks/thebe-binder-base",
        "gist-build-route",
    ),
    # --- gl ---------------------------------------------------------------------------------
    ("/v2/gl/group%2Fsub%2Frepo/main", "gl:group%2Fsub%2Frepo", "gl-escaped-namespace"),
    ("/v2/gl/Group%2fSub%2FRepo/main", "gl:group%2Fsub%2Frepo", "gl-escape-and-name-case-folded"),
    ("/v2/gl/group%2Frepo.git/main", "gl:group%2Frepo", "gl-dot-git"),
    ("/v2/gl/group%2Frepo/feature%2Fx", "gl:group%2Frepo", "gl-escaped-ref"),
    ("/v2/gl/group%2Frepo/feature/x", "gl:group%2Frepo", "gl-raw-slash-in-ref"),
    ("/v2/gl/group/sub/repo/main", "gl:group", "gl-unescaped-namespace-cut-at-first-slash"),
    ("/v2/gl/group%252Frepo/main", "gl:group%252frepo", "gl-double-escape-decoded-once"),
    ("/v2/gl/%2F/main", None, "gl-namespace-empty-after-normalising"),
    ("/v2/gl//main", None, "gl-empty-namespace"),
    # --- git --------------------------------------------------------------------------------
    (
        "/v2/git/https%3A%2F%2Fgithub.com%2Fbinder-examples%2Fconda/main",
        "git:https%3A%2F%2Fgithub.com%2Fbinder-examples%2Fconda",
        "git-escaped-url",
    ),
    (
        "/v2/git/HTTPS%3A%2F%2FGitHub.com%2FCS-SI%2Feodag.git/master",
        "git:https%3A%2F%2Fgithub.com%2Fcs-si%2Feodag",
        "git-case-and-dot-git",
    ),
    (
        "/v2/git/https%3A%2F%2Fgithub.com%2Fcs-si%2Feodag.git%2F/master",
        "git:https%3A%2F%2Fgithub.com%2Fcs-si%2Feodag",
        "git-trailing-slash-after-dot-git",
    ),
    (
        "/v2/git/https:%2F%2Fbitbucket.org%2Fteam%2Frepo/HEAD",
        "git:https%3A%2F%2Fbitbucket.org%2Fteam%2Frepo",
        "git-half-escaped-scheme",
    ),
    (
        "/v2/git/git%40github.com%3Aorg%2Frepo.git/HEAD",
        "git:ssh%3A%2F%2Fgit%40github.com%2Forg%2Frepo",
        "git-scp-like-url-becomes-ssh",
    ),
    (
        "/v2/git/https%3A%2F%2Fgit.tu-berlin.de%2Fdima%2Fisda%2F%2Fisda-sose25/HEAD",
        "git:https%3A%2F%2Fgit.tu-berlin.de%2Fdima%2Fisda%2F%2Fisda-sose25",
        "git-inner-double-slash-kept",
    ),
    (
        "/build/git/executablebooks%2Fthebe-binder-base/main",
        "git:executablebooks%2Fthebe-binder-base",
        "git-namespace-that-is-not-a-url",
    ),
    # --- DOI providers ----------------------------------------------------------------------
    ("/v2/zenodo/10.5281/zenodo.3242074", "zenodo:10.5281/zenodo.3242074", "zenodo-doi"),
    ("/v2/zenodo/10.5281/Zenodo.3242074/", "zenodo:10.5281/zenodo.3242074", "zenodo-case-slash"),
    ("/v2/zenodo/10.5281%2Fzenodo.3242074", "zenodo:10.5281/zenodo.3242074", "zenodo-escaped"),
    ("/v2/zenodo/19635623/", "zenodo:19635623", "zenodo-bare-record-id"),
    (
        "/v2/figshare/10.6084/m9.figshare.9782777.v1",
        "figshare:10.6084/m9.figshare.9782777.v1",
        "figshare-version-kept",
    ),
    ("/v2/dataverse/10.7910/DVN/TJCLKP/", "dataverse:10.7910/dvn/tjclkp", "dataverse-doi"),
    # --- hydroshare -------------------------------------------------------------------------
    (f"/v2/hydroshare/{HYDRO_ID}", f"hydroshare:{HYDRO_ID}", "hydroshare-bare-id"),
    (f"/v2/hydroshare/{HYDRO_ID.upper()}/", f"hydroshare:{HYDRO_ID}", "hydroshare-upper-id"),
    (
        f"/v2/hydroshare/https%3A%2F%2Fwww.hydroshare.org%2Fresource%2F{HYDRO_ID}%2F",
        f"hydroshare:{HYDRO_ID}",
        "hydroshare-escaped-url",
    ),
    (
        f"/v2/hydroshare/https%253A%252F%252Fwww.hydroshare.org%252Fresource%252F{HYDRO_ID}",
        f"hydroshare:{HYDRO_ID}",
        "hydroshare-double-escaped-url",
    ),
    ("/v2/hydroshare/Not-An-Id/", "hydroshare:not-an-id", "hydroshare-without-id"),
    # --- ckan -------------------------------------------------------------------------------
    (
        "/v2/ckan/https%3A%2F%2Fdemo.ckan.org%2Fdataset%2FSample-1",
        "ckan:https://demo.ckan.org/dataset/sample-1",
        "ckan-dataset",
    ),
    (
        "/v2/ckan/https%3A%2F%2Fdemo.ckan.org%2Fdataset%2Fsample-1%2Fhistory%2F0f3a/",
        "ckan:https://demo.ckan.org/dataset/sample-1",
        "ckan-history-dropped",
    ),
    (
        "/v2/ckan/https%3A%2F%2Fdemo.ckan.org%2Fdataset%2Fsample-1%3Factivity_id%3D0f3a",
        "ckan:https://demo.ckan.org/dataset/sample-1",
        "ckan-activity-id-dropped",
    ),
    (
        "/v2/ckan/https%3A%2F%2Fdemo.ckan.org%2Fdataset%2Fhistory%2F",
        "ckan:https://demo.ckan.org/dataset/history",
        "ckan-dataset-named-history",
    ),
    # --- unknown providers ------------------------------------------------------------------
    ("/v2/swhid/swh:1:dir:ABC/", "swhid:swh:1:dir:abc", "unknown-provider-swhid"),
    ("/build/Foo/Bar/Baz//", "foo:bar/baz", "unknown-provider-lower-cased"),
    # --- query strings and fragments ----------------------------------------------------------
    ("/v2/gh/org/repo/main?urlpath=lab%2Ftree%2Fx.ipynb", "gh:org/repo", "query-ignored"),
    ("/v2/gh/nteract/thebe/master#ignored", "gh:nteract/thebe", "fragment-ignored"),
    (
        "/v2/gh/fonsp/pluto-on-binder/master?urlpath=pluto/open?url=https%253A%252F%252Fx",
        "gh:fonsp/pluto-on-binder",
        "query-with-second-question-mark",
    ),
    (
        "/v2/gist/SimonBoothroyd/2405bd7d15c2908227ad42bfe3a79064#file-x-ipynb/HEAD?filepath=x",
        "gist:simonboothroyd/2405bd7d15c2908227ad42bfe3a79064",
        "fragment-before-ref",
    ),
    (
        "/v2/zenodo/10.5281/zenodo.6351210/?labpath=index.ipynb",
        "zenodo:10.5281/zenodo.6351210",
        "zenodo-query-ignored",
    ),
    ("/v2/gh/?org/repo/main", None, "query-swallows-spec"),
    # --- not launch paths -------------------------------------------------------------------
    ("", None, "empty"),
    ("/", None, "root"),
    ("/v2/", None, "v2-without-provider"),
    ("/v2/gh", None, "provider-without-spec"),
    ("/v2/gh/", None, "provider-with-empty-spec"),
    ("/v2//org/repo/main", None, "empty-provider"),
    ("/build/gh", None, "build-without-spec"),
    ("/about", None, "about"),
    ("/health", None, "health"),
    ("/versions", None, "versions"),
    ("/badge_logo.svg", None, "badge"),
    ("/assets/images/badge.svg", None, "badge-asset"),
    ("/V2/gh/org/repo/main", None, "route-word-is-case-sensitive"),
    ("//v2/gh/org/repo/main", None, "double-leading-slash"),
    ("v2/gh/org/repo/main", None, "no-leading-slash"),
    ("/binder/v2/gh/org/repo/main", None, "path-prefix-not-handled"),
    ("/user/ipython-ipython-in-depth-7kg1zqoj/lab", None, "session-url"),
    (
        "/user/x-y-abc/notebooks/build/jupyter/getting_started/10min.ipynb",
        None,
        "session-url-with-build",
    ),
]


@pytest.mark.parametrize(("path", "expected"), [c[:2] for c in CASES], ids=[c[2] for c in CASES])
def test_repo_key_table(path: str, expected: str | None) -> None:
    assert repo_key(path) == expected


def test_case_ids_are_unique() -> None:
    ids = [c[2] for c in CASES]
    assert len(ids) == len(set(ids))


def test_all_refs_of_a_github_repo_share_one_key() -> None:
    paths = [
        "/v2/gh/Org/Repo/main",
        "/v2/gh/org/repo/HEAD",
        "/v2/gh/ORG/REPO/1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b",
        "/v2/gh/org/repo.git/feature/save_world",
        "/v2/gh/org/repo",
        "/build/gh/org/repo.git/1a2b3c",
        "/repo/Org/Repo/some/path",
    ]
    assert {repo_key(p) for p in paths} == {"gh:org/repo"}


def test_v2_and_build_routes_give_the_same_key() -> None:
    specs = [
        "gh/org/repo/main",
        "gist/user/abc/HEAD",
        "gl/group%2Frepo/main",
        "git/https%3A%2F%2Fexample.org%2Frepo/main",
        "zenodo/10.5281/zenodo.1",
        f"hydroshare/{HYDRO_ID}",
        "unknown/thing",
    ]
    for spec in specs:
        assert repo_key(f"/v2/{spec}") == repo_key(f"/build/{spec}") is not None


def test_different_repositories_get_different_keys() -> None:
    paths = [
        "/v2/gh/org/repo-a/main",
        "/v2/gh/org/repo-b/main",
        "/v2/gh/org2/repo-a/main",
        "/v2/gist/org/repo-a/main",
        "/v2/gl/org%2Frepo-a/main",
        "/v2/gl/org%2Fsub%2Frepo-a/main",
        "/v2/git/https%3A%2F%2Fgithub.com%2Forg%2Frepo-a/main",
        "/v2/zenodo/10.5281/zenodo.1",
        "/v2/zenodo/10.5281/zenodo.2",
    ]
    keys = [repo_key(p) for p in paths]
    assert None not in keys
    assert len(set(keys)) == len(keys)


def test_hydroshare_bare_id_and_escaped_url_agree() -> None:
    url = f"https%3A%2F%2Fwww.hydroshare.org%2Fresource%2F{HYDRO_ID}%2F"
    assert repo_key(f"/v2/hydroshare/{HYDRO_ID}") == repo_key(f"/v2/hydroshare/{url}")


def test_gitlab_namespace_escape_case_and_name_case_do_not_matter() -> None:
    variants = [
        "/v2/gl/group%2Fsub%2Frepo/main",
        "/v2/gl/group%2fsub%2frepo/HEAD",
        "/v2/gl/Group%2FSub%2FRepo.git/v1.0",
        "/v2/gl/%67roup%2Fsub%2Frepo/main",
    ]
    assert {repo_key(p) for p in variants} == {"gl:group%2Fsub%2Frepo"}


def test_equivalent_git_url_escapings_agree() -> None:
    variants = [
        "/v2/git/https%3A%2F%2Fgithub.com%2Forg%2Frepo/main",
        "/v2/git/https%3a%2f%2fgithub.com%2forg%2frepo/HEAD",
        "/v2/git/https:%2F%2Fgithub.com%2Forg%2Frepo.git/main",
        "/v2/git/https%3A%2F%2FGitHub.com%2FOrg%2FRepo%2F/abc",
    ]
    assert len({repo_key(p) for p in variants}) == 1


@pytest.mark.parametrize(
    "path", [c[0] for c in CASES if c[1] is not None], ids=[c[2] for c in CASES if c[1] is not None]
)
@pytest.mark.parametrize("suffix", ["?urlpath=lab%2Ftree%2Fa%252Fb.ipynb&x=?y", "#frag/x?y"])
def test_query_strings_and_fragments_do_not_affect_keys(path: str, suffix: str) -> None:
    assert repo_key(path + suffix) == repo_key(path)


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_every_known_provider_is_keyed_under_its_own_id(provider: str) -> None:
    key = repo_key(f"/v2/{provider.upper()}/{HYDRO_ID}/{HYDRO_ID}/ref")
    assert key is not None
    assert key.startswith(f"{provider}:")


def test_providers_are_binderhubs_default_ids() -> None:
    assert (
        frozenset(
            {"gh", "gist", "git", "gl", "zenodo", "figshare", "hydroshare", "dataverse", "ckan"}
        )
        == PROVIDERS
    )


# --- properties -------------------------------------------------------------------------------

ANY_TEXT = st.text(st.characters(exclude_categories=()))  # includes lone surrogates
URLISH = st.text(alphabet="/%?#.:@gGiItTlLhHvV2bBuUrReEpPoO0aAfF5zZ-_ ~\u00e9\ud800")
PREFIXES = st.sampled_from(
    ["/v2/", "/build/", "/repo/", *(f"/v2/{p}/" for p in sorted(PROVIDERS)), "/v2/GL/", "/v2/x/"]
)


def _check(path: str) -> None:
    key = repo_key(path)
    assert key is None or isinstance(key, str)
    if key is not None:
        assert ":" in key
        key.encode("utf-8")  # always hashable as UTF-8


@settings(database=None, max_examples=500)
@given(ANY_TEXT)
def test_arbitrary_text_never_raises(path: str) -> None:
    _check(path)


@settings(database=None, max_examples=1000)
@given(PREFIXES, st.one_of(URLISH, ANY_TEXT))
def test_arbitrary_specs_never_raise(prefix: str, spec: str) -> None:
    _check(prefix + spec)


@settings(database=None, max_examples=300)
@given(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9-]{0,20}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9_.-]{1,30}", fullmatch=True),
    URLISH,
)
def test_any_ref_of_a_github_repo_gives_the_owner_repo_key(owner: str, repo: str, ref: str) -> None:
    expected = repo_key(f"/v2/gh/{owner}/{repo}/HEAD")
    assert repo_key(f"/v2/gh/{owner}/{repo}/{ref}") == expected
    assert repo_key(f"/build/gh/{owner.upper()}/{repo}/{ref}") == expected
