"""web app users and the sign-in throttle

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 08:10:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'user',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('email', sa.String(length=254), nullable=False),
        sa.Column('role', sa.String(length=20), nullable=False),
        sa.Column('password_hash', sa.String(length=200), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('email'),
    )
    op.create_table(
        'signinfailure',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('account', sa.String(length=254), nullable=False),
        sa.Column('address', sa.String(length=64), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    for column in ('account', 'address', 'at'):
        op.create_index(f'ix_signinfailure_{column}', 'signinfailure', [column])


def downgrade() -> None:
    op.drop_table('signinfailure')
    op.drop_table('user')
