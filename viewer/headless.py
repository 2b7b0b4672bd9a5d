"""A minimal headless viser client: connects over the websocket like a
browser, reports a camera, and reads (and discards) what the server sends.

For the benchmark and the tests, where a real browser would cost the same
two cores the training runs on. It speaks viser's wire format: one msgpack
map per message with its class name under "type".
"""
from __future__ import annotations

import threading
import time
from typing import Optional

import msgspec
import numpy as np

__all__ = ["HeadlessClient"]


class HeadlessClient:
    def __init__(self, url: str, width: int = 640, height: int = 480, timeout: float = 10.0):
        import viser
        from websockets.sync.client import connect

        ws_url = url.replace("http://", "ws://").replace("https://", "wss://")
        self.ws = connect(ws_url, subprotocols=[f"viser-v{viser.__version__}"], open_timeout=timeout,
                          max_size=None, compression=None)
        self.width, self.height = int(width), int(height)
        self.bytes_received = 0
        self.messages_received = 0
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, name="headless-viser-client", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                raw = self.ws.recv(timeout=0.2)
            except TimeoutError:
                continue
            except Exception:
                break
            self.bytes_received += len(raw)
            self.messages_received += 1

    def set_camera(self, position, look_at, up=(0.0, 0.0, 1.0), fov_y: float = 0.9,
                   width: Optional[int] = None, height: Optional[int] = None) -> None:
        """Report a camera at `position` looking at `look_at` (what a browser sends while the user drags)."""
        from splat.cameras import look_at as look_at_viewmat

        from .scene import pose_from_viewmat

        p, t, u = (np.asarray(v, dtype=np.float64) for v in (position, look_at, up))
        wxyz, _ = pose_from_viewmat(look_at_viewmat(p, t, u))
        msg = {"type": "ViewerCameraMessage", "wxyz": [float(v) for v in wxyz], "position": [float(v) for v in p],
               "fov": float(fov_y), "near": 0.01, "far": 1000.0,
               "image_height": int(height or self.height), "image_width": int(width or self.width),
               "look_at": [float(v) for v in t], "up_direction": [float(v) for v in u]}
        self.ws.send(msgspec.msgpack.encode(msg))

    def wait_for_bytes(self, n: int, timeout: float = 30.0) -> bool:
        t0 = time.perf_counter()
        while self.bytes_received < n and time.perf_counter() - t0 < timeout:
            time.sleep(0.02)
        return self.bytes_received >= n

    def close(self) -> None:
        self._closed.set()
        try:
            self.ws.close()
        except Exception:
            pass
        self._reader.join(timeout=2)
