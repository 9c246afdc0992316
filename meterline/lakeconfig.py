"""How a DuckLake is attached: its data path, object storage and data inlining, from the env.

Every proxy of a fleet and every ``billing`` run must see the lake the same way, so the
settings come from the environment (one place to set them: the unit file, the container):

=================================  ==========================================================
``METERLINE_LAKE_DATA``            where the Parquet files go: an absolute path on a disk every
                                   proxy shares, or ``s3://bucket/prefix/``. Only needed to
                                   create a lake; an existing lake knows its own data path
                                   (unset, the S3 settings below apply to any ``s3://``
                                   path; set, it must be the lake's own).
``METERLINE_S3_ENDPOINT``          ``host:port`` of an S3-compatible server (MinIO, R2, ...);
                                   unset: AWS.
``METERLINE_S3_REGION``            region (``AWS_REGION``/``AWS_DEFAULT_REGION`` also read).
``METERLINE_S3_URL_STYLE``         ``path`` or ``vhost`` (AWS's default; most others need
                                   ``path``).
``METERLINE_S3_USE_SSL``           ``true`` (default) or ``false`` (plain HTTP, a local
                                   server only).
``AWS_ACCESS_KEY_ID``,             credentials; unset: whatever DuckDB secret the user made
``AWS_SECRET_ACCESS_KEY``,         (``CREATE PERSISTENT SECRET (TYPE s3, ...)`` once, as the
``AWS_SESSION_TOKEN``              proxy's user), which DuckDB loads by itself.
``METERLINE_LAKE_INLINE_ROWS``     inserts of fewer rows than this are stored in the catalog,
                                   not as a Parquet file (default 0: never; see below).
``METERLINE_LAKE_INGEST``          ``append`` (default: each flush is a DuckLake commit) or
                                   ``staged`` (flushes go into a table of the catalog's
                                   PostgreSQL database and a proxy moves them into the lake
                                   now and then: :mod:`meterline.lakestage`).
``METERLINE_LAKE_MOVE_EVERY``      with ``staged``: seconds between moves (default 30).
=================================  ==========================================================

When any ``METERLINE_S3_*`` or ``AWS_ACCESS_KEY_ID`` is set, a temporary DuckDB secret
``meterline_s3`` is created on attach, scoped to the data path's bucket when the data
path is given; the key is never logged or stored by Meterline.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from meterline.sqltext import sql_string

#: Default ``DATA_INLINING_ROW_LIMIT``: off. Inlining would keep a flush's rows in the
#: catalog instead of a small Parquet file, but moving them to files later
#: (``ducklake_flush_inlined_data``) while proxies write duplicated rows in DuckLake 0.3
#: (DuckDB 1.4.4): 4,300 rows for 2,000 events in a test, invoices would double. Without
#: inlining each flush writes one file, and maintenance merges them (safe while writing).
DEFAULT_INLINE_ROWS = 0
INGEST_MODES = ("append", "staged")
#: Seconds between two moves of staged events into the lake (any proxy of the fleet makes
#: one when the last is older: a commit every 30 s, whatever the fleet's size).
DEFAULT_MOVE_EVERY_S = 30.0
REMOTE_SCHEMES = ("s3://", "s3a://", "s3n://", "r2://", "gcs://", "gs://")


class LakeConfigError(ValueError):
    """A lake setting in the environment is wrong; the message names the variable."""


def _boolean(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise LakeConfigError(f"{name}={text!r}: expected true or false")


@dataclass(frozen=True)
class LakeSettings:
    data_path: str | None
    inline_rows: int
    endpoint: str | None = None
    region: str | None = None
    url_style: str | None = None
    use_ssl: bool | None = None
    key_id: str | None = None
    secret: str | None = None
    session_token: str | None = None
    ingest: str = "append"
    """``append`` or ``staged`` (:mod:`meterline.lakestage`)."""
    move_every_s: float = 30.0

    @property
    def remote(self) -> bool:
        """Object storage may be read: the data path is remote, or it is not given (an
        existing lake's own path may be, so the S3 settings must apply to it too)."""
        return self.data_path is None or self.data_path.startswith(REMOTE_SCHEMES)

    @property
    def makes_secret(self) -> bool:
        return self.remote and any(
            v is not None
            for v in (self.endpoint, self.region, self.url_style, self.use_ssl, self.key_id)
        )

    def attach_options(self) -> str:
        options = [f"DATA_INLINING_ROW_LIMIT {self.inline_rows}"]
        if self.data_path is not None:
            options.append(f"DATA_PATH {sql_string(self.data_path)}")
        return ", ".join(options)

    def setup_sql(self) -> list[str]:
        """Statements to run before ``ATTACH``: the S3 secret, if the env describes one."""
        if not self.makes_secret:
            return []
        fields = {"TYPE": "s3"}
        if self.data_path is not None:  # else every s3:// path (the lake knows its own)
            scheme, _, rest = self.data_path.partition("://")
            fields["SCOPE"] = sql_string(f"{scheme}://{rest.split('/')[0]}")
        for name, value in (
            ("KEY_ID", self.key_id),
            ("SECRET", self.secret),
            ("SESSION_TOKEN", self.session_token),
            ("REGION", self.region),
            ("ENDPOINT", self.endpoint),
            ("URL_STYLE", self.url_style),
        ):
            if value is not None:
                fields[name] = sql_string(value)
        if self.use_ssl is not None:
            fields["USE_SSL"] = "true" if self.use_ssl else "false"
        body = ", ".join(f"{k} {v}" for k, v in fields.items())
        return [f"CREATE OR REPLACE TEMPORARY SECRET meterline_s3 ({body})"]


def lake_settings(env: Mapping[str, str] | None = None) -> LakeSettings:
    """Read and check the lake settings (see the module docstring)."""
    env = os.environ if env is None else env
    data_path = env.get("METERLINE_LAKE_DATA") or None
    if data_path is not None and not data_path.startswith(REMOTE_SCHEMES):
        if "://" in data_path:
            raise LakeConfigError(
                f"METERLINE_LAKE_DATA={data_path!r}: only a local path or s3:// is supported"
            )
        if not os.path.isabs(data_path):
            raise LakeConfigError(
                f"METERLINE_LAKE_DATA={data_path!r} must be an absolute path, the same on "
                "every proxy and for billing (or s3://bucket/prefix/)"
            )
    inline_text = env.get("METERLINE_LAKE_INLINE_ROWS", str(DEFAULT_INLINE_ROWS))
    try:
        inline_rows = int(inline_text)
        if inline_rows < 0:
            raise ValueError
    except ValueError:
        raise LakeConfigError(
            f"METERLINE_LAKE_INLINE_ROWS={inline_text!r}: expected a whole number >= 0"
        ) from None
    url_style = env.get("METERLINE_S3_URL_STYLE") or None
    if url_style is not None and url_style not in ("path", "vhost"):
        raise LakeConfigError(f"METERLINE_S3_URL_STYLE={url_style!r}: expected path or vhost")
    ssl_text = env.get("METERLINE_S3_USE_SSL") or None
    key_id = env.get("AWS_ACCESS_KEY_ID") or None
    secret = env.get("AWS_SECRET_ACCESS_KEY") or None
    if (key_id is None) != (secret is None):
        raise LakeConfigError("set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither")
    endpoint = env.get("METERLINE_S3_ENDPOINT") or None
    if endpoint is not None and "://" in endpoint:
        raise LakeConfigError(
            f"METERLINE_S3_ENDPOINT={endpoint!r}: give host:port (no scheme; "
            "METERLINE_S3_USE_SSL=false for plain HTTP)"
        )
    ingest = env.get("METERLINE_LAKE_INGEST") or "append"
    if ingest not in INGEST_MODES:
        raise LakeConfigError(f"METERLINE_LAKE_INGEST={ingest!r}: expected append or staged")
    move_text = env.get("METERLINE_LAKE_MOVE_EVERY") or str(DEFAULT_MOVE_EVERY_S)
    try:
        move_every_s = float(move_text)
    except ValueError:
        move_every_s = math.nan
    if not (math.isfinite(move_every_s) and move_every_s > 0):
        raise LakeConfigError(f"METERLINE_LAKE_MOVE_EVERY={move_text!r}: expected seconds > 0")
    return LakeSettings(
        data_path=data_path,
        ingest=ingest,
        move_every_s=move_every_s,
        inline_rows=inline_rows,
        endpoint=endpoint,
        region=(
            env.get("METERLINE_S3_REGION")
            or env.get("AWS_REGION")
            or env.get("AWS_DEFAULT_REGION")
            or None
        ),
        url_style=url_style,
        use_ssl=None if ssl_text is None else _boolean("METERLINE_S3_USE_SSL", ssl_text),
        key_id=key_id,
        secret=secret,
        session_token=env.get("AWS_SESSION_TOKEN") or None,
    )
