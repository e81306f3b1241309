"""Type names for light Core rows and the statements that select them."""

from typing import Any, TypeAlias

from sqlalchemy import Row, Select

# A row of selected columns: attribute access by column name, no ORM identity or state.
LightRow: TypeAlias = Row[*tuple[Any, ...]]
LightSelect: TypeAlias = Select[*tuple[Any, ...]]
