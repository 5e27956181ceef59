"""The village as data, and how the player moves through it. No pygame here: the renderer draws
from these shapes and the tests drive movement and proximity headless."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    w: float
    h: float

    @property
    def right(self) -> float:
        return self.x + self.w

    @property
    def bottom(self) -> float:
        return self.y + self.h

    @property
    def center(self) -> tuple[float, float]:
        return (self.x + self.w / 2, self.y + self.h / 2)

    def intersects(self, other: Rect) -> bool:
        # Touching edges do not count: the player may slide along a wall flush against it.
        return self.x < other.right and other.x < self.right and self.y < other.bottom and other.y < self.bottom

    def contains(self, other: Rect) -> bool:
        return self.x <= other.x and self.y <= other.y and other.right <= self.right and other.bottom <= self.bottom


@dataclass(frozen=True)
class Building:
    name: str
    kind: str
    """what the renderer draws: "house", "forge", "inn", "mill" or "wall"""
    rect: Rect


@dataclass(frozen=True)
class Tree:
    x: float
    y: float
    radius: float

    @property
    def trunk(self) -> Rect:
        # Only the trunk blocks: the crown is drawn over the ground, so the player can brush past it.
        size = self.radius * 0.8
        return Rect(self.x - size / 2, self.y - size / 2, size, size)


@dataclass(frozen=True)
class NpcSpot:
    """Where an NPC stands and which persona card (npcrl persona id) speaks there."""

    persona_id: str
    x: float
    y: float
    size: float = 22.0

    @property
    def rect(self) -> Rect:
        return Rect(self.x - self.size / 2, self.y - self.size / 2, self.size, self.size)


@dataclass(frozen=True)
class World:
    width: float
    height: float
    buildings: tuple[Building, ...]
    trees: tuple[Tree, ...]
    paths: tuple[Rect, ...]
    """drawn only; paths never block"""
    npcs: tuple[NpcSpot, ...]
    player_start: tuple[float, float]
    gate: Rect
    """the opening in the north wall (drawn as a gate; walkable)"""
    solids: tuple[Rect, ...] = field(init=False)

    def __post_init__(self) -> None:
        solids = [b.rect for b in self.buildings] + [t.trunk for t in self.trees] + [n.rect for n in self.npcs]
        object.__setattr__(self, "solids", tuple(solids))

    @property
    def bounds(self) -> Rect:
        return Rect(0, 0, self.width, self.height)

    def blocked(self, box: Rect) -> bool:
        return not self.bounds.contains(box) or any(box.intersects(solid) for solid in self.solids)


def village() -> World:
    """Oakrest: a walled village with the gate in the north wall, Brom's forge and Osric's watermill
    on the west side of the lane, Mara's inn on the east side, houses to the south, and trees around
    the edges."""
    wall_y, wall_h = 0.0, 24.0
    gate = Rect(440, wall_y, 80, wall_h)
    buildings = (
        Building("north wall (west)", "wall", Rect(0, wall_y, gate.x, wall_h)),
        Building("north wall (east)", "wall", Rect(gate.right, wall_y, 960 - gate.right, wall_h)),
        Building("Anvil and Ember", "forge", Rect(110, 190, 170, 100)),
        Building("Watermill", "mill", Rect(305, 200, 110, 90)),
        Building("Sleeping Fox", "inn", Rect(640, 170, 210, 120)),
        Building("Wenna's cottage", "house", Rect(110, 430, 110, 80)),
        Building("Miller's house", "house", Rect(290, 450, 90, 70)),
        Building("Reeve's house", "house", Rect(600, 440, 120, 80)),
        Building("Weaver's house", "house", Rect(780, 455, 90, 70)),
    )
    trees = tuple(
        Tree(x, y, 18)
        for x, y in (
            (40, 80), (90, 120), (350, 90), (390, 160), (600, 90), (880, 80), (920, 140),
            (40, 380), (30, 560), (250, 590), (420, 600), (560, 600), (700, 600), (910, 580), (920, 380),
        )
    )  # fmt: skip
    paths = (
        Rect(gate.x + 15, 0, 50, 640),  # the road from the gate south through the village
        Rect(60, 315, 860, 40),  # the lane past the forge and the inn
    )
    npcs = (
        NpcSpot("blacksmith", 195, 305),  # at the forge door
        NpcSpot("innkeeper", 745, 305),  # at the inn door
        NpcSpot("guard", 545, 50),  # beside the gate
        NpcSpot("miller", 360, 305),  # at the mill door
    )
    return World(960, 640, buildings, trees, paths, npcs, player_start=(480, 560), gate=gate)


@dataclass
class Player:
    x: float
    y: float
    size: float = 20.0
    speed: float = 170.0
    """pixels per second: movement scales with frame time, so speed does not depend on the frame rate"""

    @property
    def rect(self) -> Rect:
        return Rect(self.x - self.size / 2, self.y - self.size / 2, self.size, self.size)

    @property
    def pos(self) -> tuple[float, float]:
        return (self.x, self.y)


def move(player: Player, dx: float, dy: float, dt: float, world: World) -> None:
    """Move ``player`` along (dx, dy) for ``dt`` seconds, stopping at anything solid.

    Each axis moves separately, so walking diagonally into a wall slides along it instead of
    sticking. Long steps are split so a slow frame cannot carry the player through a thin wall.
    """
    length = math.hypot(dx, dy)
    if length == 0 or dt <= 0:
        return
    # Diagonals are normalised: holding two keys must not be faster than one.
    vx, vy = dx / length * player.speed, dy / length * player.speed
    distance = player.speed * dt
    steps = max(1, math.ceil(distance / (player.size / 2)))
    for _ in range(steps):
        _move_axis(player, vx * dt / steps, 0.0, world)
        _move_axis(player, 0.0, vy * dt / steps, world)


def _move_axis(player: Player, step_x: float, step_y: float, world: World) -> None:
    if step_x == 0 and step_y == 0:
        return
    old = (player.x, player.y)
    player.x += step_x
    player.y += step_y
    hits = [solid for solid in world.solids if player.rect.intersects(solid)]
    half = player.size / 2
    # Stop flush against what was hit, not a step short of it: a gap of up to one step would
    # show, and would make reaching an NPC depend on the frame rate.
    if hits:
        if step_x > 0:
            player.x = min(solid.x for solid in hits) - half
        elif step_x < 0:
            player.x = max(solid.right for solid in hits) + half
        elif step_y > 0:
            player.y = min(solid.y for solid in hits) - half
        else:
            player.y = max(solid.bottom for solid in hits) + half
    player.x = min(max(player.x, half), world.width - half)
    player.y = min(max(player.y, half), world.height - half)
    if world.blocked(player.rect):
        player.x, player.y = old  # never end up inside anything, whatever the rounding


def distance(a: tuple[float, float], b: tuple[float, float]) -> float:
    return math.hypot(a[0] - b[0], a[1] - b[1])


def nearest_npc(pos: tuple[float, float], spots: tuple[NpcSpot, ...], radius: float) -> NpcSpot | None:
    """The NPC closest to ``pos`` within ``radius`` (centre to centre), or None."""
    best: NpcSpot | None = None
    best_distance = radius
    for spot in spots:
        d = distance(pos, (spot.x, spot.y))
        if d <= best_distance:
            best, best_distance = spot, d
    return best
