"""The camera: held still over a junction, or riding a car that decides as traffic does.

The moving camera's car brakes, speeds up or changes lane at random moments; each choice is
a logged, visible `BranchEvent` of kind "ego", drawn from the behaviour generator, so forks
of a moving-camera clip branch as well.
"""

from __future__ import annotations

import math

import numpy as np

from .agents import BranchEvent, smoothstep

EGO_ID = 0  # agent id of the ego car in its BranchEvents (agents count from 1)
EGO_BRAKE = 4.0  # m/s^2
EGO_ACCEL = 2.5  # m/s^2
LANE_CHANGE_S = 2.0  # duration of a lane change


class CameraRig:
    """Mixin of StreetWorld: where the camera is, what it sees, and the ego car's choices."""

    def _init_camera(self) -> None:
        st, rng = self.street, self.render_rng
        model = self.view.model
        centre_north = model.height_m / math.tan(math.radians(model.pitch_deg))
        if self.config.camera == "static":  # the junction box and one of its corner blocks
            side_x, side_y = rng.choice((-1, 1), 2)
            self.cam_x = st.junction_x(0) + side_x * rng.uniform(1, 4)
            self.cam_y = st.main_y + centre_north + side_y * rng.uniform(1, 4)
            self.cam_speed = 0.0
            # the crop on the raster grid, so that a small shake seldom rounds to a pixel jump
            ppm, view = self.config.ppm, self.view
            self.cam_x = (round((self.cam_x - view.east_max_m) * ppm) / ppm) + view.east_max_m
            self.cam_y = (round((self.cam_y - view.north_far_m) * ppm) / ppm) + view.north_far_m
        else:  # driving east, the view centred just north of the road's centre line
            self.cam_x = rng.uniform(0, st.width_m)
            self.cam_y = st.main_y + centre_north - 2 + rng.uniform(-1, 1)
            self.cam_speed = rng.uniform(4, 8)
        self.cam_target = self.cam_speed
        self.home_y = self.lane_from = self.lane_to = self.cam_y
        self.overtaking = False  # one lane to the left of home
        self.lane_s = 1.0  # progress of the current lane change, 1 = done

    def _ego_log(self, decision: str) -> None:
        self.events.append(BranchEvent("ego", EGO_ID, decision, self.index, True))

    def _decide_ego(self) -> None:
        """Brake to a stop, speed up, or move over a lane (and back) at a random moment."""
        rng = self.rng
        choice = int(rng.choice(3, p=(0.35, 0.35, 0.3)))
        if choice == 0 and self.cam_target > 0:
            self.cam_target = 0.0
            self._ego_log("brake")
        elif choice == 1:
            self.cam_target = float(rng.uniform(7, 10))
            self._ego_log("speed_up")
        elif choice == 2 and self.lane_s >= 1:
            self.overtaking = not self.overtaking
            self.lane_from = self.cam_y
            self.lane_to = self.home_y - self.overtaking * self.street.lane_w  # y grows south
            self.lane_s = 0.0
            self._ego_log("change_lane")

    def _move_camera(self, dt: float) -> None:
        if self.config.camera != "vehicle":
            return
        if self.rng.random() < self.config.ego_decision_rate:
            self._decide_ego()
        gap = self.cam_target - self.cam_speed
        self.cam_speed += float(np.clip(gap, -EGO_BRAKE * dt, EGO_ACCEL * dt))
        self.cam_x = (self.cam_x + self.cam_speed * dt) % self.street.width_m
        if self.lane_s < 1:
            self.lane_s = min(1.0, self.lane_s + dt / LANE_CHANGE_S)
            t = smoothstep(self.lane_s)
            self.cam_y = self.lane_from + (self.lane_to - self.lane_from) * t

    def visible(self, x: float, y: float, margin_px: float = 0.0) -> bool:
        """Whether the ground point (x, y) (metres) lies in the current camera image."""
        u, v = self.view.project(
            np.float64(self._wrap_dx(x - self.cam_x)), np.float64(self.cam_y - y)
        )
        m = margin_px
        return bool(-m <= u < self.config.width + m and -m <= v < self.config.height + m)

    def agent_pixels(self) -> list[tuple[str, int, float, float]]:
        """(kind, id, u, v) of the agents whose centre is in view, for tests and debugging."""
        out = []
        for a in self.agents:
            if a.mode != "inactive" and self.visible(a.x + a.ox, a.y + a.oy):
                u, v = self.view.project(
                    np.float64(self._wrap_dx(a.x + a.ox - self.cam_x)),
                    np.float64(self.cam_y - a.y - a.oy),
                )
                out.append((a.kind, a.id, float(u), float(v)))
        return out
