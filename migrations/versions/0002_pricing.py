"""Price-book versions, meter aggregations, quota alerts, credit grants and ledgers.

Revision ID: 0002_pricing
Revises: 0001_initial
Create Date: 2026-11-21
"""

from __future__ import annotations

from alembic import op

revision = "0002_pricing"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

UPGRADE = """
-- Every price book the worker has run with, by version. A version names one content
-- for ever: starting with a changed file under an old version is refused.
CREATE TABLE pricebooks (
    version          text PRIMARY KEY,
    digest           text NOT NULL,
    source           text NOT NULL,
    first_loaded_at  timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE accounts
    ADD COLUMN status text NOT NULL DEFAULT 'active',
    ADD COLUMN plan_changed_at timestamptz;

ALTER TABLE usage_ledger ADD COLUMN pricebook_version text REFERENCES pricebooks (version);

-- How each total folds its ledger rows (sum, count, max, latest, unique_count), fixed
-- when the row is created; latest_at is the time of the value a `latest` total holds.
ALTER TABLE usage_aggregates
    ADD COLUMN aggregation text NOT NULL DEFAULT 'sum'
        CHECK (aggregation IN ('sum', 'count', 'max', 'latest', 'unique_count')),
    ADD COLUMN latest_at timestamptz;

-- The distinct values behind each unique_count total (JSON text of the value).
CREATE TABLE meter_unique_values (
    account_id    text NOT NULL,
    meter         text NOT NULL,
    period_start  timestamptz NOT NULL,
    value         text NOT NULL,
    PRIMARY KEY (account_id, meter, period_start, value)
);

-- One row per quota threshold announced: the primary key is the "at most once per
-- account, meter, period and threshold, ever" guarantee.
CREATE TABLE quota_alerts (
    account_id    text NOT NULL REFERENCES accounts (account_id),
    meter         text NOT NULL,
    period_start  timestamptz NOT NULL,
    threshold     integer NOT NULL,
    event_id      text NOT NULL UNIQUE,
    used          numeric NOT NULL,
    quota_limit   numeric NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, meter, period_start, threshold)
);

-- Plan changes and other account events; append-only like the usage ledger.
CREATE TABLE account_ledger (
    entry_id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id         text NOT NULL REFERENCES accounts (account_id),
    kind               text NOT NULL,
    details            jsonb NOT NULL,
    pricebook_version  text REFERENCES pricebooks (version),
    effective_at       timestamptz NOT NULL,
    recorded_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX account_ledger_account ON account_ledger (account_id, entry_id);

-- Credit grants. `remaining` is a projection of credit_ledger (sum of the grant's
-- entries), kept next to the grant so a burn reads and locks one row per grant.
CREATE TABLE credit_grants (
    grant_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id    text NOT NULL REFERENCES accounts (account_id),
    source        text NOT NULL CHECK (source IN ('plan', 'purchase', 'promotional')),
    amount        numeric NOT NULL CHECK (amount > 0),
    remaining     numeric NOT NULL CHECK (remaining >= 0 AND remaining <= amount),
    priority      integer NOT NULL,
    valid_from    timestamptz NOT NULL,
    expires_at    timestamptz,
    period_start  timestamptz,
    grant_key     text NOT NULL UNIQUE,
    note          text NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK ((source = 'plan') = (period_start IS NOT NULL))
);
CREATE INDEX credit_grants_live ON credit_grants (account_id) WHERE remaining > 0;

-- Every credit movement: + for a grant, - for a burn or an expiry; a shortfall (usage
-- no grant covered) is recorded with its credits and no grant.
CREATE TABLE credit_ledger (
    entry_id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id         text NOT NULL REFERENCES accounts (account_id),
    grant_id           bigint REFERENCES credit_grants (grant_id),
    kind               text NOT NULL
        CHECK (kind IN ('grant', 'burn', 'expiry', 'shortfall', 'reversal')),
    credits            numeric NOT NULL,
    meter              text,
    event_source       text,
    event_id           text,
    pricebook_version  text REFERENCES pricebooks (version),
    effective_at       timestamptz NOT NULL,
    recorded_at        timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'shortfall') = (grant_id IS NULL))
);
CREATE INDEX credit_ledger_account ON credit_ledger (account_id, entry_id);
CREATE INDEX credit_ledger_grant ON credit_ledger (grant_id);

CREATE TRIGGER account_ledger_append_only
    BEFORE UPDATE OR DELETE ON account_ledger
    FOR EACH ROW EXECUTE FUNCTION refuse_ledger_rewrite();
CREATE TRIGGER account_ledger_no_truncate
    BEFORE TRUNCATE ON account_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_ledger_rewrite();
CREATE TRIGGER credit_ledger_append_only
    BEFORE UPDATE OR DELETE ON credit_ledger
    FOR EACH ROW EXECUTE FUNCTION refuse_ledger_rewrite();
CREATE TRIGGER credit_ledger_no_truncate
    BEFORE TRUNCATE ON credit_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_ledger_rewrite();
"""

DOWNGRADE = """
DROP TABLE credit_ledger;
DROP TABLE credit_grants;
DROP TABLE account_ledger;
DROP TABLE quota_alerts;
DROP TABLE meter_unique_values;
ALTER TABLE usage_aggregates DROP COLUMN latest_at, DROP COLUMN aggregation;
ALTER TABLE usage_ledger DROP COLUMN pricebook_version;
ALTER TABLE accounts DROP COLUMN plan_changed_at, DROP COLUMN status;
DROP TABLE pricebooks;
"""


def upgrade() -> None:
    """Add pricing, quota-alert and credit tables."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """Remove them (only for test databases: the credit ledger goes with them)."""
    op.execute(DOWNGRADE)
