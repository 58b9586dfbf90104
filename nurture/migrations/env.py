"""Alembic environment: runs migrations on the URL nurture.db passes in."""

from alembic import context
from sqlmodel import SQLModel

from nurture import models  # noqa: F401  (registers the tables on SQLModel.metadata)
from nurture.db import get_engine

config = context.config


def run() -> None:
    engine = get_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=SQLModel.metadata,
            render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copy
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run()
