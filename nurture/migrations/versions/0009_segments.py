"""segments and bulk enrollment: the event index of did/not_did, the value readers of
`where` in SQL (PostgreSQL; SQLite gets them from nurture.values at connect), bulk runs

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 12:30:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

# The same readings as nurture.values (as_number, str.casefold ~ lower, blank, as_bool,
# re.search), so a segment matches in PostgreSQL what the rules match in Python. A bad
# pattern or an out-of-range number is a non-match / infinity, never an error.
_POSTGRES_FUNCTIONS = (
    r"""CREATE OR REPLACE FUNCTION nurture_number(value text) RETURNS double precision
    LANGUAGE plpgsql IMMUTABLE AS $$
    BEGIN
      IF value ~ '^[[:space:]]*[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?[[:space:]]*$' THEN
        RETURN CAST(value AS double precision);
      END IF;
      RETURN NULL;
    EXCEPTION WHEN numeric_value_out_of_range THEN
      IF value ~ '[eE]-' THEN RETURN 0; END IF;
      RETURN CASE WHEN btrim(value) LIKE '-%' THEN '-Infinity'::float8 ELSE 'Infinity'::float8 END;
    END $$""",
    r"""CREATE OR REPLACE FUNCTION nurture_fold(value text) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$ SELECT lower(value) $$""",
    r"""CREATE OR REPLACE FUNCTION nurture_present(value text) RETURNS integer
    LANGUAGE sql IMMUTABLE AS $$ SELECT CASE WHEN value ~ '[^[:space:]]' THEN 1 ELSE 0 END $$""",
    r"""CREATE OR REPLACE FUNCTION nurture_bool(value text) RETURNS integer
    LANGUAGE sql IMMUTABLE AS $$
      SELECT CASE lower(regexp_replace(value, '^[[:space:]]+|[[:space:]]+$', '', 'g'))
        WHEN 'true' THEN 1 WHEN 'yes' THEN 1 WHEN 'on' THEN 1 WHEN '1' THEN 1
        WHEN 'false' THEN 0 WHEN 'no' THEN 0 WHEN 'off' THEN 0 WHEN '0' THEN 0 END $$""",
    r"""CREATE OR REPLACE FUNCTION nurture_search(pattern text, value text) RETURNS integer
    LANGUAGE plpgsql IMMUTABLE AS $$
    BEGIN
      RETURN CASE WHEN value ~ pattern THEN 1 ELSE 0 END;
    EXCEPTION WHEN invalid_regular_expression THEN
      RETURN 0;
    END $$""",
)
_FUNCTION_NAMES = ("nurture_number(text)", "nurture_fold(text)", "nurture_present(text)", "nurture_bool(text)",
                   "nurture_search(text, text)")


def upgrade() -> None:
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.create_index('ix_event_lead_type_at', ['lead_key', 'type', 'at'], unique=False)
    op.create_table('bulkrun',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('segment', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('campaign', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('segment', 'campaign')
    )
    op.create_table('bulkenrollment',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('lead_key', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    sa.Column('enrollments_before', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('run_id', 'lead_key')
    )
    if op.get_bind().dialect.name == "postgresql":
        for statement in _POSTGRES_FUNCTIONS:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in _FUNCTION_NAMES:
            op.execute(f"DROP FUNCTION IF EXISTS {name}")
    op.drop_table('bulkenrollment')
    op.drop_table('bulkrun')
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.drop_index('ix_event_lead_type_at')

