"""campaign control: pause, resume, stop

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 12:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'campaign_control',
        sa.Column('campaign', sa.String(length=100), nullable=False),
        sa.Column('state', sa.String(length=10), nullable=False),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('changed_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('changed_by', sa.String(length=254), nullable=True),
        sa.PrimaryKeyConstraint('campaign'),
    )


def downgrade() -> None:
    op.drop_table('campaign_control')
