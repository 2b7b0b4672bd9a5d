"""The viser web viewer: any model the toolkit writes, or a training as it runs.

Each browser gets the picture the project's own renderer makes from its
camera (server-side, so every backend and model kind shows exactly what it
renders), sent as the scene background. Static 3D models can also be shown by
viser's client-side Gaussian splatting for smooth navigation ("Display").

Threads: viser's server thread and callbacks only record what changed (the
camera, a control) and wake one render thread, which renders the newest state
of each client, latest wins: a lower resolution while the camera moves, the
full one once it rests. The Budget slider's fraction is applied there too (its first
use measures the Gaussians' importance). A live training hands over parameter copies through
`viewer.live.TrainingLink` and never waits for the viewer.
"""
from __future__ import annotations

import errno
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import torch

from .live import TrainingLink
from .scene import SceneError, ViewCamera, pose_from_viewmat
from .scene import _quat_to_mat as _rot

__all__ = ["Viewer", "ViewerError", "check_port", "MIN_RESOLUTION", "MAX_RESOLUTION"]

MOVE_SETTLE_S = 0.2  # a camera still for this long gets the full-resolution render
STATUS_PERIOD_S = 0.5  # training status and loss plot refresh
PLOT_POINTS = 400
MIN_RESOLUTION, MAX_RESOLUTION = 16, 4096  # the server render's long side, pixels


class ViewerError(OSError):
    """The viewer cannot start (for example, its port is taken)."""


def check_port(host: str, port: int) -> None:
    """Raise ViewerError naming the port when something already listens on it
    (viser itself would silently move to the next port)."""
    if port == 0:
        return
    if not 0 < port < 65536:
        raise ViewerError(f"port {port} is out of range (1-65535, or 0 for any free port)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ViewerError(f"host {host!r}: {e.strerror}") from None
    fam, _, _, _, addr = infos[0]
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed server in TIME_WAIT is not "busy"
        s.bind(addr)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ViewerError(f"port {port} on {host} is busy (another program is listening there); "
                              f"choose another with --port, or --port 0 for any free port") from None
        raise ViewerError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    finally:
        s.close()


def _backends():
    out = ["auto", "cpu", "torch", "raytrace"]
    if torch.cuda.is_available():
        out.append("cuda")
    return out


class _ClientView:
    def __init__(self, client):
        self.client = client
        self.dirty = True
        self.moved_at = 0.0
        self.full = False
        self.version = -1
        self.shown = False


class Viewer:
    """Serve `scene` (a `viewer.scene.SplatScene` or `Image2DScene`) at http://host:port.

    `link` attaches a running training (status, loss plot, pause, live model).
    `snapshot_dir` is where "Snapshot" writes PNGs (they are also downloaded
    by the browser that asked). With a training attached, the render thread runs
    at nice `training_nice` (Linux), so renders use the CPU time training leaves
    (bench/viewer.py: 10 keeps a watched training within 10% of its speed on a
    2-core CPU; a paused training gives the viewer the whole machine)."""

    def __init__(self, scene, *, host: str = "127.0.0.1", port: int = 8080, link: Optional[TrainingLink] = None,
                 snapshot_dir: Path = Path("snapshots"), resolution: int = 512, refresh_s: float = 2.0,
                 training_nice: int = 10, log: Callable[[str], None] = print):
        import viser

        if not MIN_RESOLUTION <= int(resolution) <= MAX_RESOLUTION:
            raise ValueError(f"resolution must be {MIN_RESOLUTION}..{MAX_RESOLUTION} pixels (the long side of "
                             f"the render), got {resolution}")
        check_port(host, port)
        self.scene = scene
        self.link = link
        self.log = log
        self.snapshot_dir = Path(snapshot_dir)
        self.training_nice = int(training_nice)
        self._views: Dict[int, _ClientView] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._last_request = 0.0
        self._splats_version = -1
        self._budget_failed: Optional[float] = None
        self._snap_count = 0
        self.render_count = 0
        self.last_frames: Dict[int, tuple] = {}  # client id -> (image, full resolution?, mode) last sent
        self.render_seconds = 0.0
        self.last_error: Optional[str] = None
        self.server = viser.ViserServer(host=host, port=port, label="splat", verbose=False)
        if port != 0 and self.server.get_port() != port:  # lost a race for the port after the check
            self.server.stop()
            raise ViewerError(f"port {port} on {host} is busy; choose another with --port")
        self.host, self.port = host, self.server.get_port()
        try:
            self._build(resolution, refresh_s)
        except Exception:
            self.server.stop()
            raise
        self._thread = threading.Thread(target=self._render_loop, name="splat-viewer-render", daemon=True)
        self._thread.start()
        if link is not None:
            link.on_snapshot = self._on_snapshot
            link.on_status = self._wake.set
            self._status_thread = threading.Thread(target=self._status_loop, name="splat-viewer-status",
                                                   daemon=True)
            self._status_thread.start()

    @property
    def url(self) -> str:
        host = "localhost" if self.host in ("0.0.0.0", "127.0.0.1", "::") else self.host
        return f"http://{host}:{self.port}"

    # ------------------------------------------------------------------ GUI
    def _build(self, resolution: int, refresh_s: float) -> None:
        server, scene = self.server, self.scene
        server.gui.configure_theme(control_width="medium", show_logo=False, show_share_button=False,
                                   brand_color=(60, 110, 200))
        up = scene.up_direction()
        server.scene.set_up_direction(tuple(float(v) for v in up))
        wxyz, pos, fov = scene.home_pose()
        R = _rot(wxyz)
        look = self._look_distance()
        ic = server.initial_camera
        ic.position = tuple(float(v) for v in pos)
        ic.look_at = tuple(float(v) for v in pos + R[:, 2] * look)
        ic.up = tuple(float(v) for v in up)
        ic.fov = float(fov)
        if scene.kind == "3d":
            ic.near = 0.01 * look
            ic.far = 1000.0 * look

        gui = server.gui
        self.info = gui.add_markdown(self._info_text())
        with gui.add_folder("View"):
            self.display = gui.add_dropdown("Display", ("server render", "client splats"),
                                            initial_value="server render", visible=scene.kind == "3d",
                                            hint="server render: the project's renderer, every mode and "
                                                 "backend; client splats: viser's WebGL splatting (RGB, "
                                                 "smooth, SH degree 0)")
            self.mode = gui.add_dropdown("Render mode", tuple(scene.modes), initial_value=scene.modes[0])
            self.resolution = gui.add_slider("Resolution", min=MIN_RESOLUTION, max=MAX_RESOLUTION, step=16,
                                             initial_value=resolution,
                                             hint="long side of the server render, in pixels (half while moving)")
            self.backend = gui.add_dropdown("Backend", tuple(_backends()), initial_value="auto")
            self.budget = None
            if getattr(scene, "supports_budget", False) and self.link is None:  # a model file, not a training
                self.budget = gui.add_slider(
                    "Budget", min=0.01, max=1.0, step=0.01, initial_value=1.0,
                    hint="fraction of the Gaussians shown: the most important ones (blend weight summed over "
                         + ("the training views" if scene.cameras else "views around the model")
                         + "), each dropped one merged into a near survivor (splat.compress.budget)")
                self.budget.on_update(lambda _: self._wake.set())  # the render thread applies it
            self.render_info = gui.add_markdown("")
            self.snapshot = gui.add_button("Snapshot (PNG)", hint="render this view at full resolution, save it "
                                           f"under {self.snapshot_dir} and download it")
        self.time = None
        if scene.time_range is not None:  # 4D models
            with gui.add_folder("Time"):
                lo, hi = scene.time_range
                self.time = gui.add_slider("t", min=float(lo), max=float(hi), step=(hi - lo) / 1000,
                                           initial_value=float(lo))
                if hasattr(scene, "set_time"):  # client-side splats follow the slider too
                    self.time.on_update(lambda _: (scene.set_time(float(self.time.value)), self._invalidate()))
                else:
                    self.time.on_update(lambda _: self._invalidate())
        self.light = None
        if scene.has_light:  # relightable models
            with gui.add_folder("Light"):
                self.light = gui.add_vector3("Position", initial_value=tuple(float(v) for v in scene.light),
                                             step=0.05, hint="the point light's world position")
                self.light_intensity = gui.add_vector3(
                    "Intensity", initial_value=tuple(float(v) for v in scene.light_intensity), step=0.5,
                    hint="linear RGB radiant intensity, W/sr (falls off as 1/d^2)")

                def moved(_):
                    try:
                        scene.set_light(np.asarray(self.light.value, dtype=np.float64),
                                        np.asarray(self.light_intensity.value, dtype=np.float64))
                    except ValueError as e:  # a non-finite entry: keep the last good light
                        self.last_error = str(e)
                        return
                    self._invalidate()

                self.light.on_update(moved)
                self.light_intensity.on_update(moved)
        if scene.kind == "image2d":
            with gui.add_folder("Level of detail"):
                n = scene.num_gaussians
                self.first_k = gui.add_slider("Gaussians", min=1, max=n, step=1, initial_value=n,
                                              hint="render only the first k Gaussians (coarse first)")

                @self.first_k.on_update
                def _(_):
                    scene.first_k = None if self.first_k.value >= n else int(self.first_k.value)
                    self._invalidate()
        if self.link is not None:
            with gui.add_folder("Training"):
                self.status = gui.add_markdown(self._status_text())
                self.plot = gui.add_uplot(data=(np.zeros(1), np.zeros(1)), series=(
                    {"label": "step"}, {"label": "loss", "stroke": "#3c6ec8", "width": 1.5}),
                    title="training loss", aspect=1.6,
                    scales={"x": {"time": False, "auto": True}, "y": {"auto": True}},
                    legend={"show": False})
                self.pause = gui.add_button("Pause training")
                self.refresh = gui.add_slider("Live refresh (s)", min=0.2, max=10.0, step=0.1,
                                              initial_value=refresh_s,
                                              hint="how often the picture follows the training model")

                @self.pause.on_click
                def _(_):
                    self.link.set_paused(not self.link.paused)
                    self._update_status()
        if scene.cameras:
            with gui.add_folder("Training cameras"):
                self.show_cams = gui.add_checkbox("Show cameras", True, hint="click a camera to view from it")
                self.cam_images = gui.add_checkbox("Camera images", False,
                                                   hint="show each training image inside its frustum")
            self._add_frusta()
            self.show_cams.on_update(lambda _: [setattr(f, "visible", self.show_cams.value) for f in self._frusta])
            self.cam_images.on_update(lambda _: self._add_frusta())

        for h in (self.mode, self.resolution, self.backend):
            h.on_update(lambda _: self._invalidate())
        self.display.on_update(lambda _: self._on_display())
        self.snapshot.on_click(lambda ev: self._on_snapshot_click(ev.client))
        server.on_client_connect(self._on_connect)
        server.on_client_disconnect(self._on_disconnect)

    def _look_distance(self) -> float:
        sc = self.scene
        if sc.kind == "image2d":
            return float(abs(sc.home_pose()[1][2]))
        if sc.cameras:
            C = np.stack([pose_from_viewmat(c.viewmat)[1] for c in sc.cameras])
            spread = float(np.median(np.linalg.norm(C - C.mean(0), axis=1)))
            if spread > 1e-6:
                return spread
        m = sc.splats["means"].cpu().numpy()
        return float(max(np.percentile(np.linalg.norm(m - np.median(m, 0), axis=1), 90), 1e-3) * 2.5)

    def _add_frusta(self) -> None:
        cams = self.scene.cameras
        C = np.stack([pose_from_viewmat(c.viewmat)[1] for c in cams])
        d = np.linalg.norm(C[:, None] - C[None], axis=-1)
        np.fill_diagonal(d, np.inf)
        nn = float(np.median(d.min(1))) if len(cams) > 1 else self._look_distance()
        scale = 0.2 * nn if np.isfinite(nn) and nn > 0 else 0.1
        self._frusta = []
        for i, c in enumerate(cams):
            wxyz, pos = pose_from_viewmat(c.viewmat)
            f = self.server.scene.add_camera_frustum(
                f"/cameras/{i:04d}", fov=c.fov_y, aspect=c.width / c.height, scale=scale, thickness=1.5, thickness_units="screen",
                color=(230, 120, 40), image=c.thumbnail if self.cam_images.value else None, wxyz=wxyz,
                position=pos, visible=self.show_cams.value)
            f.on_click(lambda ev, c=c: self.jump_to(ev.client, c))
            self._frusta.append(f)

    def jump_to(self, client, cam) -> None:
        """Move `client`'s view onto training camera `cam`."""
        wxyz, pos = pose_from_viewmat(cam.viewmat)
        R = _rot(wxyz)
        with client.atomic():
            client.camera.fov = cam.fov_y
            client.camera.position = pos
            client.camera.look_at = pos + R[:, 2] * self._look_distance()
            client.camera.up_direction = -R[:, 1]

    # ------------------------------------------------------------------ events
    def _on_connect(self, client) -> None:
        cv = _ClientView(client)
        with self._lock:
            self._views[client.client_id] = cv

        @client.camera.on_update
        def _(_cam):
            cv.dirty = True
            cv.moved_at = time.perf_counter()
            self._wake.set()

        self._wake.set()

    def _on_disconnect(self, client) -> None:
        with self._lock:
            self._views.pop(client.client_id, None)
            self.last_frames.pop(client.client_id, None)

    def _invalidate(self) -> None:
        with self._lock:
            for cv in self._views.values():
                cv.dirty = True
                cv.full = False
                cv.moved_at = 0.0
        self._wake.set()

    def _on_display(self) -> None:
        with self._send_lock:  # no server frame in flight lands after the switch
            if self.display.value == "client splats":
                try:
                    self._sync_client_splats(force=True)
                except Exception as e:  # a model with no per-Gaussian colour (spacetime --features)
                    self.last_error = f"client splats: {e}"
                    return
                for cv in list(self._views.values()):
                    cv.client.scene.set_background_image(None)
                    cv.shown = False
            elif getattr(self, "_splats_node", None) is not None:
                self._splats_node.visible = False
        self._invalidate()

    def _apply_budget(self) -> None:
        """In the render thread: show the Budget slider's fraction when it differs from the scene's
        (the first time measures the importance: seconds, while callbacks stay free)."""
        if self.budget is None:
            return
        want = float(self.budget.value)
        if want == self.scene.budget or want == self._budget_failed:
            return
        first = not self.scene.importance_measured and want < 1.0
        if first:
            self.render_info.content = "measuring the Gaussians' importance for the budget..."
        try:
            self.scene.set_budget(want)
        except Exception as e:  # keep serving the last model shown
            self.last_error = f"budget: {type(e).__name__}: {e}"
            self.render_info.content = self.last_error
            self._budget_failed = want  # not again until the slider moves
            return
        self._budget_failed = None
        self.info.content = self._info_text()

    def _sync_client_splats(self, force: bool = False) -> None:
        version = self.scene.version  # read first: a change while they are computed is synced next time
        if not force and self._splats_version == version:
            return
        centers, covs, rgbs, opacities = self.scene.client_splats()
        self._splats_node = self.server.scene.add_gaussian_splats("/splats", centers=centers, covariances=covs,
                                                                  rgbs=rgbs, opacities=opacities)
        self._splats_version = version

    def _on_snapshot(self, splats) -> None:  # called in the training thread: no more than a swap
        self.scene.update(splats)
        self._wake.set()

    def _on_snapshot_click(self, client) -> None:
        try:
            img, _, _, _ = self._render_for(client, full=True)
            path = self.save_snapshot(img)
            client.send_file_download(path.name, path.read_bytes())  # the file as written, not a second encode
            client.add_notification("Snapshot saved", str(path), auto_close_seconds=4.0)
        except Exception as e:  # the viewer must survive a failed render or a full disk
            client.add_notification("Snapshot failed", str(e), color="red", auto_close_seconds=8.0)

    def save_snapshot(self, img: np.ndarray) -> Path:
        from splat.io.images import write_png

        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        step = f"_step{self.link.step}" if self.link is not None else ""
        while True:
            self._snap_count += 1
            path = self.snapshot_dir / f"snapshot{step}_{self.mode.value}_{self._snap_count:03d}.png"
            if not path.exists():
                break
        write_png(path, img)
        return path

    # ------------------------------------------------------------------ rendering
    def camera_of(self, client, full: bool = True) -> Optional[ViewCamera]:
        cam = client.camera
        try:
            W, H = int(cam.image_width), int(cam.image_height)
        except AssertionError:  # no camera message from this client yet
            return None
        if W < 1 or H < 1:
            return None
        long_side = int(self.resolution.value) if full else max(64, int(self.resolution.value) // 2)
        s = min(1.0, long_side / max(W, H))
        w, h = max(1, round(W * s)), max(1, round(H * s))
        return ViewCamera.from_pose(cam.wxyz, cam.position, cam.fov, w, h)

    def _render_for(self, client, full: bool):
        vc = self.camera_of(client, full)
        if vc is None:
            raise SceneError("this browser has not reported its camera yet")
        kw = {}
        if self.time is not None:
            kw["t"] = float(self.time.value)
        if self.light is not None:
            kw["light"], kw["light_intensity"] = self.scene.current_light()  # what set_light accepted
        version, mode = self.scene.version, self.mode.value
        t0 = time.perf_counter()
        img = self.scene.render(vc, mode, self.backend.value, **kw)
        return img, time.perf_counter() - t0, version, mode

    def _render_loop(self) -> None:
        # one OpenMP thread for viewer renders: training keeps its cores, and two
        # full OpenMP teams spinning on the same cores would slow both many-fold
        try:
            from splat.backends import cpu

            cpu.load().splat_set_num_threads(1)
        except Exception:
            pass
        if self.link is not None:
            # beside a training, renders take the CPU time the training leaves: on Linux a
            # thread has its own nice value, inherited by the OpenMP threads it starts
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.training_nice)
            except (AttributeError, OSError):
                pass
        while not self._stop.is_set():
            self._wake.wait(0.1)
            self._wake.clear()
            if self._stop.is_set():
                break
            self._apply_budget()
            with self._lock:
                views = list(self._views.values())
            if not views:
                continue
            if self.display.value == "client splats":
                if self.link is not None:
                    self._maybe_request(float(self.refresh.value) * 5)
                if self.link is not None or self.budget is not None:  # a new snapshot, a new budget
                    try:
                        with self._send_lock:  # not after a switch back to server renders
                            if self.display.value == "client splats":
                                self._sync_client_splats()
                    except Exception as e:
                        self.last_error = str(e)
                continue
            if self.link is not None:
                self._maybe_request(float(self.refresh.value))
            now = time.perf_counter()
            for cv in views:
                moving = now - cv.moved_at < MOVE_SETTLE_S
                stale = cv.version != self.scene.version
                if not (cv.dirty or stale or (not cv.full and not moving)):
                    continue
                cv.dirty = False
                try:
                    img, secs, version, mode = self._render_for(cv.client, full=not moving)
                except SceneError:
                    cv.dirty = True
                    continue
                except Exception as e:  # show the error, keep serving
                    self.last_error = f"{type(e).__name__}: {e}"
                    self.render_info.content = f"render failed: {self.last_error}"
                    cv.version = self.scene.version
                    cv.full = True
                    continue
                with self._send_lock:
                    if self.display.value != "server render":  # switched while this frame rendered
                        break
                    cv.version, cv.full = version, not moving
                    self.render_count += 1
                    self.render_seconds += secs
                    cv.client.scene.set_background_image(img, format="jpeg", jpeg_quality=90)
                    cv.shown = True
                    self.last_frames[cv.client.client_id] = (img, cv.full, mode)
                h, w = img.shape[:2]
                self.render_info.content = (f"{w}x{h} {mode} in {1000 * secs:.0f} ms "
                                            f"({self.backend.value})")
            # a moving camera that stopped gets its full-resolution frame without another event
            if any(not cv.full for cv in views):
                self._wake.set()
                time.sleep(0.02)

    def _maybe_request(self, period: float) -> None:
        link = self.link
        if link.finished and self._last_request > 0:
            return
        now = time.perf_counter()
        if not link.snapshot_pending and now - self._last_request >= period:
            link.request_snapshot()
            self._last_request = now

    # ------------------------------------------------------------------ status
    def _info_text(self) -> str:
        sc = self.scene
        what = "2D image model" if sc.kind == "image2d" else "3D Gaussians"
        live = " (training)" if self.link is not None else ""
        if getattr(self, "budget", None) is not None and sc.budget < 1.0:
            return f"**{sc.name}**: {sc.num_shown:,} of {sc.num_gaussians:,} {what} (budget {sc.budget:.2f})"
        return f"**{sc.name}**{live}: {sc.num_gaussians:,} {what}"

    def _status_text(self) -> str:
        l = self.link
        if l.loss is None:
            return "waiting for the first step"
        state = "finished" if l.finished else ("**paused**" if l.paused else f"{l.steps_per_second:.1f} steps/s")
        return (f"step **{l.step:,}** / {l.iterations:,} ({state})  \n"
                f"loss **{l.loss:.4f}**, PSNR **{l.psnr:.2f} dB**  \n"
                f"Gaussians **{l.num_gaussians:,}**")

    def _update_status(self) -> None:
        """Plot and counts first, the status line last: a status that says "finished" comes
        with the whole loss plot (tests and users poll the status)."""
        l = self.link
        n = len(l.history_steps)
        if n:
            idx = np.unique(np.linspace(0, n - 1, min(n, PLOT_POINTS)).astype(np.int64))
            x = np.asarray(l.history_steps, dtype=np.float64)[idx]
            loss = np.asarray(l.history_loss, dtype=np.float64)
            # a running mean over the points each plotted point stands for
            k = max(1, n // PLOT_POINTS)
            smooth = np.convolve(loss, np.ones(k) / k, mode="full")[:n] if k > 1 else loss
            if k > 1:
                smooth[:k] = np.cumsum(loss[:k]) / np.arange(1, k + 1)
            self.plot.data = (x, smooth[idx])
        self.info.content = self._info_text().replace(f"{self.scene.num_gaussians:,}", f"{l.num_gaussians:,}")
        self.pause.label = "Resume training" if l.paused else "Pause training"
        self.pause.disabled = l.finished
        self.status.content = self._status_text()

    def _status_loop(self) -> None:
        last_step = None
        while not self._stop.wait(STATUS_PERIOD_S):
            if not self._views:
                continue
            key = (self.link.step, self.link.paused, self.link.finished)
            if key != last_step:
                last_step = key
                try:
                    self._update_status()
                except Exception as e:
                    self.last_error = str(e)

    # ------------------------------------------------------------------ lifetime
    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        self.server.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

