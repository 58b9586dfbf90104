"""lead starts: a durable mark per stored lead until its workflow has it; lead list indexes

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 07:40:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('lead_start',
    sa.Column('lead_key', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('created', sa.Boolean(), nullable=False),
    sa.Column('campaign', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
    sa.Column('token', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('marked_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('claimed_until', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('lead_key')
    )
    # Leads stored before this revision whose workflow never got through a first task
    # (an import or an add stopped between the store and Temporal): start them.
    op.execute("INSERT INTO lead_start (lead_key, created, token, marked_at) "
               "SELECT key, true, 'migrated', created_at FROM lead WHERE state_version = 0 AND email IS NOT NULL")
    with op.batch_alter_table('lead', schema=None) as batch_op:
        batch_op.create_index('ix_lead_stage_id', ['stage', 'id'], unique=False)
        batch_op.create_index('ix_lead_campaign_id', ['campaign', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('lead', schema=None) as batch_op:
        batch_op.drop_index('ix_lead_campaign_id')
        batch_op.drop_index('ix_lead_stage_id')
    op.drop_table('lead_start')
