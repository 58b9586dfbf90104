"""campaign stats: enrollments, step visits, first engagement times on email rows

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 08:10:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

ENGAGEMENT = ('delivered_at', 'opened_at', 'clicked_at', 'bounced_at', 'unsubscribed_at')


def upgrade() -> None:
    op.create_table('enrollment',
    sa.Column('lead_key', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('campaign', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('version', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('enrolled_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('exit_reason', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    sa.PrimaryKeyConstraint('lead_key', 'number')
    )
    op.create_index(op.f('ix_enrollment_campaign'), 'enrollment', ['campaign'], unique=False)
    op.create_table('step_visit',
    sa.Column('lead_key', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('step', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('campaign', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('lead_key', 'number', 'step')
    )
    op.create_index('ix_step_visit_campaign_step', 'step_visit', ['campaign', 'step'], unique=False)
    with op.batch_alter_table('email', schema=None) as batch_op:
        for name in ENGAGEMENT:
            batch_op.add_column(sa.Column(name, sa.DateTime(timezone=True), nullable=True))
    op.create_index('ix_email_campaign_step', 'email', ['campaign', 'step'], unique=False)
    op.create_index('ix_lead_campaign_step', 'lead', ['campaign', 'step'], unique=False)
    op.create_index('ix_history_kind_lead', 'history', ['kind', 'lead_key'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_history_kind_lead', table_name='history')
    op.drop_index('ix_lead_campaign_step', table_name='lead')
    op.drop_index('ix_email_campaign_step', table_name='email')
    with op.batch_alter_table('email', schema=None) as batch_op:
        for name in ENGAGEMENT:
            batch_op.drop_column(name)
    op.drop_index('ix_step_visit_campaign_step', table_name='step_visit')
    op.drop_table('step_visit')
    op.drop_index(op.f('ix_enrollment_campaign'), table_name='enrollment')
    op.drop_table('enrollment')
