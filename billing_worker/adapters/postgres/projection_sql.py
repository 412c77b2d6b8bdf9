"""The SQL of the projection checks (``projections.py``): each statement returns only the
rows where a projection and its ledger disagree, with both sides.

``:account`` (NULL: every account) narrows each statement to one account. ``:terms`` is a
JSON array of ``{v: version, m: meter, g: aggregation, f: value field}`` and ``:fallback``
the version assumed for ledger rows without one. A distinct value is stored as the JSON
text the worker wrote; stored values that are JSON numbers are compared in ``jsonb``
spelling, which is how the ledger's dimensions spell them (``1e-05`` as ``0.00001``).
"""

from __future__ import annotations

PRICEBOOK_SOURCES = "SELECT version, source FROM pricebooks ORDER BY version"

_ACCOUNT = "(CAST(:account AS text) IS NULL OR {column} = :account)"
_TERMS = """terms AS (
        SELECT * FROM json_to_recordset(CAST(:terms AS json)) AS t(v text, m text, g text, f text)
    )"""
# The distinct values a unique_count meter's rows carry, as jsonb text.
_DERIVED_VALUES = f"""derived AS (
        SELECT DISTINCT l.account_id, l.meter, l.period_start,
               CAST(l.dimensions -> t.f AS text) AS value
        FROM usage_ledger AS l
        JOIN terms AS t ON t.v = coalesce(l.pricebook_version, :fallback) AND t.m = l.meter
        WHERE t.g = 'unique_count' AND t.f IS NOT NULL
          AND jsonb_typeof(l.dimensions -> t.f) <> 'null'
          AND {_ACCOUNT.format(column="l.account_id")}
    )"""

AGGREGATE_DIFFERENCES = f"""
    WITH {_TERMS}, {_DERIVED_VALUES},
    folded AS (
        SELECT l.account_id, l.meter, l.period_start, max(l.period_end) AS period_end,
               count(*) AS n, sum(l.quantity) AS total, max(l.quantity) AS biggest,
               (array_agg(l.quantity ORDER BY l.occurred_at DESC, l.entry_id DESC))[1] AS newest,
               max(l.occurred_at) AS newest_at,
               (array_agg(t.g ORDER BY l.entry_id))[1] AS written_as
        FROM usage_ledger AS l
        LEFT JOIN terms AS t ON t.v = coalesce(l.pricebook_version, :fallback) AND t.m = l.meter
        WHERE {_ACCOUNT.format(column="l.account_id")}
        GROUP BY 1, 2, 3
    ), distinct_counts AS (
        SELECT account_id, meter, period_start, count(*) AS n FROM derived GROUP BY 1, 2, 3
    ), stored AS (
        SELECT * FROM usage_aggregates WHERE {_ACCOUNT.format(column="account_id")}
    ), expected AS (
        SELECT f.account_id, f.meter, f.period_start, f.period_end, f.n AS event_count,
               a.aggregation,
               CASE a.aggregation
                   WHEN 'max' THEN f.biggest
                   WHEN 'latest' THEN f.newest
                   WHEN 'unique_count' THEN coalesce(u.n, 0)
                   ELSE f.total END AS quantity,
               CASE WHEN a.aggregation = 'latest' THEN f.newest_at END AS latest_at
        FROM folded AS f
        LEFT JOIN stored AS s USING (account_id, meter, period_start)
        LEFT JOIN distinct_counts AS u USING (account_id, meter, period_start)
        CROSS JOIN LATERAL (SELECT coalesce(s.aggregation, f.written_as, 'sum') AS aggregation) AS a
    )
    SELECT coalesce(s.account_id, e.account_id), coalesce(s.meter, e.meter),
           coalesce(s.period_start, e.period_start),
           s.account_id IS NOT NULL, s.aggregation, s.period_end, s.quantity, s.event_count,
           s.latest_at,
           e.account_id IS NOT NULL, e.aggregation, e.period_end, e.quantity, e.event_count,
           e.latest_at
    FROM expected AS e
    FULL JOIN stored AS s
      ON s.account_id = e.account_id AND s.meter = e.meter AND s.period_start = e.period_start
    WHERE e.account_id IS NULL OR s.account_id IS NULL
       OR s.quantity <> e.quantity OR s.event_count <> e.event_count
       OR s.period_end <> e.period_end
       OR (e.aggregation = 'latest' AND s.latest_at IS DISTINCT FROM e.latest_at)
    ORDER BY 1, 2, 3
"""

UNIQUE_VALUE_DIFFERENCES = f"""
    WITH {_TERMS}, {_DERIVED_VALUES},
    stored AS (
        SELECT account_id, meter, period_start, value,
               CASE WHEN value ~ '^-?(0|[1-9][0-9]*)([.][0-9]+)?([eE][+-]?[0-9]+)?$'
                    THEN CAST(CAST(value AS jsonb) AS text) ELSE value END AS canonical
        FROM meter_unique_values WHERE {_ACCOUNT.format(column="account_id")}
    )
    SELECT coalesce(s.account_id, d.account_id), coalesce(s.meter, d.meter),
           coalesce(s.period_start, d.period_start), s.value, d.value
    FROM derived AS d
    FULL JOIN stored AS s
      ON s.account_id = d.account_id AND s.meter = d.meter
     AND s.period_start = d.period_start AND s.canonical = d.value
    WHERE s.value IS NULL OR d.value IS NULL
    ORDER BY 1, 2, 3, 4, 5
"""

GRANT_DIFFERENCES = f"""
    SELECT g.account_id, g.grant_id, g.remaining, coalesce(c.total, 0)
    FROM credit_grants AS g
    LEFT JOIN (SELECT grant_id, sum(credits) AS total FROM credit_ledger
               WHERE grant_id IS NOT NULL AND {_ACCOUNT.format(column="account_id")}
               GROUP BY grant_id) AS c USING (grant_id)
    WHERE {_ACCOUNT.format(column="g.account_id")} AND g.remaining <> coalesce(c.total, 0)
    ORDER BY 1, 2
"""

INVOICE_DIFFERENCES = f"""
    WITH chosen AS (
        SELECT * FROM invoices WHERE {_ACCOUNT.format(column="account_id")}
    ), line_totals AS (
        SELECT l.invoice_id, sum(l.amount) AS amount
        FROM invoice_lines AS l JOIN chosen USING (invoice_id) GROUP BY 1
    ), moves AS (
        SELECT DISTINCT ON (details ->> 'invoice_id')
               details ->> 'invoice_id' AS invoice_id, details ->> 'to' AS status
        FROM account_ledger
        WHERE kind = 'invoice_status' AND {_ACCOUNT.format(column="account_id")}
        ORDER BY details ->> 'invoice_id', entry_id DESC
    ), expected AS (
        -- never moved, an invoice is as issued (open, or a draft held for review)
        SELECT i.invoice_id, coalesce(t.amount, 0) AS amount,
               coalesce(m.status,
                        CASE WHEN i.status IN ('draft', 'open') THEN i.status ELSE 'open' END)
                   AS status
        FROM chosen AS i
        LEFT JOIN line_totals AS t USING (invoice_id)
        LEFT JOIN moves AS m USING (invoice_id)
    )
    SELECT i.account_id, i.invoice_id, i.subtotal, i.total, i.status,
           e.amount, e.amount, e.status
    FROM chosen AS i JOIN expected AS e USING (invoice_id)
    WHERE i.subtotal <> e.amount OR i.total <> e.amount OR i.status <> e.status
    ORDER BY 1, 2
"""

ACCOUNT_DIFFERENCES = f"""
    WITH last_change AS (
        SELECT DISTINCT ON (account_id) account_id, details ->> 'plan' AS plan,
               details ->> 'status' AS status, effective_at
        FROM account_ledger
        WHERE kind = 'plan_changed' AND {_ACCOUNT.format(column="account_id")}
        ORDER BY account_id, entry_id DESC
    )
    SELECT a.account_id, a.plan, a.status, a.plan_changed_at, c.plan, c.status, c.effective_at
    FROM accounts AS a JOIN last_change AS c USING (account_id)
    WHERE a.plan <> c.plan OR a.status IS DISTINCT FROM c.status
       OR a.plan_changed_at IS DISTINCT FROM c.effective_at
    ORDER BY 1
"""

CHECKED_ROWS = f"""
    SELECT (SELECT count(*) FROM usage_aggregates WHERE {_ACCOUNT.format(column="account_id")}),
           (SELECT count(*) FROM meter_unique_values
            WHERE {_ACCOUNT.format(column="account_id")}),
           (SELECT count(*) FROM credit_grants WHERE {_ACCOUNT.format(column="account_id")}),
           (SELECT count(*) FROM invoices WHERE {_ACCOUNT.format(column="account_id")}),
           (SELECT count(*) FROM accounts WHERE {_ACCOUNT.format(column="account_id")})
"""
