"""The watchdog's main loop: a supervisord program polling getAllProcessInfo() every 0.5 s.

Why polling plus supervisord's log rather than an event listener: listener buffers drop events
and a listener that writes anything but the protocol to stdout wedges supervisord. The log has
every exit, in order, with its time; getAllProcessInfo() is the truth about what runs now.
"""

from __future__ import annotations

import http.client
import os
import signal
import time
import xmlrpc.client
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from halton_watchdog import loop_detector as ld
from halton_watchdog.config_watch import CONFIG, PORTS, Watcher, catches_sighup, plan_for
from halton_watchdog.exits import EXITED, GAVE_UP, STOPPED, ExitEvent, LogTail, PollCounter
from halton_watchdog.healing import heal_before_restart
from halton_watchdog.ports import foreign_holder, renegotiate, to_restart
from halton_watchdog.probes import LivenessTracker, ProbeResult, probe
from halton_watchdog.recursion import check_processes

from halton_meter.core.config import Config, ConfigError, load_config
from halton_meter.core.logging import configure_logging, get_logger
from halton_meter.core.paths import Home
from halton_meter.core.runtime import EffectivePorts, load_effective_ports
from halton_meter.port_alloc import PortError
from halton_meter.service.rpc import supervisor_proxy
from halton_meter.service.watchdog_state import read_watchdog_state, write_watchdog_state

WATCHED = ("daemon", "edge", "api")
POLL_S = 0.5
PROBE_EVERY_S = 2.0
PROBE_GRACE_S = 5.0
RECURSION_EVERY_S = 5.0
HEARTBEAT_S = 5.0
RPC_TIMEOUT_S = 30.0  # stopProcess waits for stopwaitsecs
_NOT_SETTLED = {"BACKOFF", "FATAL", "EXITED"}

Prober = Callable[[str, int], ProbeResult]


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


class Watchdog:
    def __init__(
        self,
        home: Home,
        rpc: Any = None,
        clock: Callable[[], float] = time.time,
        prober: Prober = probe,
        watch_files: bool = True,
    ) -> None:
        self.home = home
        self.log = get_logger()
        self.rpc = rpc if rpc is not None else supervisor_proxy(home, RPC_TIMEOUT_S).supervisor
        self.clock = clock
        self.prober = prober
        self.config = self._load_config_or_defaults()
        self.ports: EffectivePorts = load_effective_ports(home)
        self.state: dict[str, Any] = read_watchdog_state(home)
        for key, empty in (("exits", {}), ("stops", {}), ("programs", {}), ("history", [])):
            self.state.setdefault(key, empty)
        self.state.setdefault("ports_renegotiated", [])
        position = self.state.get("log") or {}
        self.tail = LogTail(home.supervisord_log, position.get("inode"), position.get("offset"))
        self._fresh_tail = not position
        self.poll_counter = PollCounter()
        self.detectors = {
            name: ld.LoopDetector(
                name,
                self.config.watchdog.loop_exits,
                self.config.watchdog.loop_window_s,
                clock=clock,
            )
            for name in WATCHED
        }
        for name, detector in self.detectors.items():
            detector.restore(self.state["programs"].get(name) or {})
        self.liveness = LivenessTracker()
        self.watcher = Watcher(home) if watch_files else None
        self._pool = ThreadPoolExecutor(max_workers=len(WATCHED), thread_name_prefix="probe")
        self._next_probe = clock() + PROBE_EVERY_S
        self._next_recursion = clock()
        self._next_heartbeat = 0.0
        self._dirty = True
        self._running = True
        self.supervisord_pid: int | None = None

    # --- lifecycle ----------------------------------------------------------------------

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        if self.watcher:
            self.watcher.start()
        self.log.info("watchdog.started", pid=os.getpid(), ports=self.ports.as_dict())
        while self._running:
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - the watchdog must outlive any one bad step
                self.log.error("watchdog.step_failed", error=repr(exc))
            time.sleep(POLL_S)
        if self.watcher:
            self.watcher.stop()
        self._persist(force=True)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def stop(self) -> None:
        self._running = False

    # --- one poll -----------------------------------------------------------------------

    def step(self) -> None:
        now = self.clock()
        infos = self._infos()
        if infos is None:
            return
        by_name = {str(i["name"]): i for i in infos}
        events = self.tail.read_events()
        polled = self.poll_counter.observe(infos)
        for event in polled if events is None else events:
            self._on_event(event)
        for name, detector in self.detectors.items():
            info = by_name.get(name)
            if info is None:
                continue
            if info.get("statename") == "FATAL" and detector.state in (ld.STABLE, ld.SUSPECT):
                self._act(name, detector.on_gave_up(now))
            if info.get("statename") in _NOT_SETTLED and self._foreign_port(name):
                continue
            self._act(name, detector.tick(now))
        if now >= self._next_probe:
            self._next_probe = now + PROBE_EVERY_S
            self._probe(by_name)
        if now >= self._next_recursion:
            self._next_recursion = now + RECURSION_EVERY_S
            self._check_recursion(by_name)
        if self.watcher:
            self._apply_changes(self.watcher.drain())
        self._persist()

    def _infos(self) -> list[dict[str, Any]] | None:
        try:
            infos = list(self.rpc.getAllProcessInfo())
            if self.supervisord_pid is None:
                self.supervisord_pid = int(self.rpc.getPID())
                if self._fresh_tail:  # first run in this home: from this supervisord's start
                    self.tail.start_after(f"supervisord started with pid {self.supervisord_pid}")
                    self._fresh_tail = False
            return infos
        except (OSError, xmlrpc.client.Error, http.client.HTTPException) as exc:
            self.log.warning("watchdog.supervisord_unreachable", error=repr(exc))
            return None

    def _on_event(self, event: ExitEvent) -> None:
        if event.program not in (*WATCHED, "watchdog"):
            return
        detector = self.detectors.get(event.program)
        # Lines from before this watchdog (a previous supervisord's session) are counted,
        # but only recent ones can make a loop now.
        recent = self.clock() - event.at <= self.config.watchdog.loop_window_s
        if event.kind == EXITED:
            self.state["exits"][event.program] = self.state["exits"].get(event.program, 0) + 1
            self._history(event.program, "exit", at=event.at, detail=event.detail)
            if detector is not None and recent:
                self._act(event.program, detector.on_exit(event.at))
        elif event.kind == STOPPED:
            self.state["stops"][event.program] = self.state["stops"].get(event.program, 0) + 1
        elif event.kind == GAVE_UP and detector is not None and recent:
            self._history(event.program, "fatal", at=event.at)
            self._act(event.program, detector.on_gave_up(event.at))
        self._dirty = True

    # --- actions ------------------------------------------------------------------------

    def _act(self, program: str, action: ld.Action) -> None:
        detector = self.detectors[program]
        if action.kind == ld.STOP:
            if self._foreign_port(program):
                return
            self.log.warning(
                "watchdog.respawn_loop",
                program=program,
                exits=action.exits,
                window_s=action.window_s,
                attempt=action.attempt,
                backoff_s=action.backoff_s,
            )
            self._stop_program(program)
            detector.on_stopped(self.clock())
            self._cause(
                program,
                "watchdog.respawn_loop",
                exits=action.exits,
                window_s=action.window_s,
                attempt=action.attempt,
                retry_in_s=action.backoff_s,
            )
            self._record_action(program, "stop", "watchdog.respawn_loop")
        elif action.kind == ld.START:
            self.log.info("watchdog.retry", program=program, attempt=action.attempt)
            self._heal()
            self._start_program(program)
            self._record_action(program, "start", "watchdog.backoff_elapsed")
        self.state["programs"][program] = {
            **detector.snapshot(),
            "liveness_failures": self.liveness.failures.get(program, 0),
        }
        self._dirty = True

    def _heal(self) -> None:
        try:
            heal_before_restart(self.home, self.supervisord_pid)
        except Exception as exc:  # noqa: BLE001 - healing is best effort; the restart goes on
            self.log.error("watchdog.heal_failed", error=repr(exc))

    def _stop_program(self, program: str) -> None:
        try:
            self.rpc.stopProcess(program, True)
        except xmlrpc.client.Fault as fault:
            if "NOT_RUNNING" not in fault.faultString:
                self.log.error("watchdog.stop_failed", program=program, error=fault.faultString)

    def _start_program(self, program: str) -> None:
        try:
            self.rpc.startProcess(program, False)
        except xmlrpc.client.Fault as fault:
            if "ALREADY_STARTED" not in fault.faultString:
                self.log.error("watchdog.start_failed", program=program, error=fault.faultString)
                return
            if self._state_of(program) != "BACKOFF":
                return  # someone started it already (a user's `start`): leave it running
            # BACKOFF answers ALREADY_STARTED: stop, then start.
            self._stop_program(program)
            try:
                self.rpc.startProcess(program, False)
            except xmlrpc.client.Fault as again:
                self.log.error("watchdog.start_failed", program=program, error=again.faultString)

    def restart(self, program: str, cause: str) -> None:
        self._stop_program(program)
        self._heal()
        self._start_program(program)
        self._record_action(program, "restart", cause)

    # --- ports --------------------------------------------------------------------------

    def _foreign_port(self, program: str) -> bool:
        """A foreign holder on the program's port: renegotiate, restart dependents. Handled?"""
        port = getattr(self.ports, program)
        holder = foreign_holder(self.home, port)
        if holder is None:
            return False
        old = self.ports
        try:
            result = renegotiate(self.home, self.config, old)
        except PortError as exc:
            self.log.error("watchdog.port_conflict", program=program, port=port, error=str(exc))
            return False
        self.ports = result.new
        entry = {
            "at": _iso(self.clock()),
            "program": program,
            "old": old.as_dict(),
            "new": result.new.as_dict(),
            "holder": holder.describe(),
        }
        self.state["ports_renegotiated"] = [*self.state["ports_renegotiated"], entry][-20:]
        self._cause(program, "ports.renegotiated", holder=holder.describe(), port=port)
        self.log.warning(
            "watchdog.port_taken", program=program, port=port, holder=holder.describe()
        )
        for name in result.restart:
            self.detectors[name].reset()
            self.restart(name, "ports.renegotiated")
        return True

    # --- liveness -----------------------------------------------------------------------

    def _probe(self, by_name: dict[str, dict[str, Any]]) -> None:
        targets = {}
        for name in WATCHED:
            info = by_name.get(name) or {}
            uptime = float(info.get("now", 0)) - float(info.get("start", 0))
            if (
                info.get("statename") == "RUNNING"
                and uptime >= PROBE_GRACE_S
                and self.detectors[name].state in (ld.STABLE, ld.SUSPECT)
            ):
                targets[name] = self._pool.submit(self.prober, name, getattr(self.ports, name))
        for name, future in targets.items():
            result = future.result()
            if self.liveness.record(name, result):
                self.log.warning(
                    "watchdog.liveness_restart",
                    program=name,
                    failures=self.liveness.threshold,
                    detail=result.detail,
                )
                self._cause(name, "watchdog.liveness_restart", detail=result.detail)
                self.restart(name, "watchdog.liveness_restart")

    # --- recursion ----------------------------------------------------------------------

    def _check_recursion(self, by_name: dict[str, dict[str, Any]]) -> None:
        pids = {n: int(i["pid"]) for n, i in by_name.items() if i.get("pid")}
        found = [r.as_dict() for r in check_processes(pids, self.ports.edge)]
        if found and found != self.state.get("recursion"):
            for item in found:
                self.log.error("watchdog.proxy_recursion", edge_port=self.ports.edge, **item)
                self._cause(item["program"], "watchdog.proxy_recursion", var=item["var"])
        if found != self.state.get("recursion"):
            self.state["recursion"] = found
            self._dirty = True

    # --- config and state-file changes --------------------------------------------------

    def _apply_changes(self, kinds: set[str]) -> None:
        if CONFIG in kinds:
            self._reload_config()
        if PORTS in kinds:
            new = load_effective_ports(self.home)
            if new != self.ports:
                old, self.ports = self.ports, new
                self.log.info("watchdog.ports_changed", old=old.as_dict(), new=new.as_dict())
                for name in to_restart(old, new):
                    self.restart(name, "ports.changed")

    def _reload_config(self) -> None:
        try:
            new = load_config(self.home)
        except ConfigError as exc:
            self.log.warning("config.reload_refused", error=str(exc))
            self._cause("config", "config.reload_refused", error=str(exc))
            return
        plan = plan_for(self.config, new)
        self.config = new
        if plan.watchdog:
            for detector in self.detectors.values():
                detector.reconfigure(new.watchdog.loop_exits, new.watchdog.loop_window_s)
        restart = list(plan.restart)
        if plan.renegotiate:
            try:
                result = renegotiate(self.home, new, self.ports)
                self.ports = result.new
                restart += [p for p in result.restart if p not in restart]
            except PortError as exc:
                self.log.error("config.reload_refused", error=str(exc))
        for name in plan.signal_hup:
            pid = self._pid_of(name)
            if pid is None or not catches_sighup(pid):
                restart.append(name)  # SIGHUP would kill it: restart it cleanly instead
                continue
            try:
                self.rpc.signalProcess(name, "HUP")
                self.log.info("config.reloaded", program=name, mode="sighup")
            except xmlrpc.client.Fault as fault:
                self.log.warning("config.reload_failed", program=name, error=fault.faultString)
        for name in restart:
            self.log.info("config.reloaded", program=name, mode="restart")
            self.restart(name, "config.changed")

    def _info_of(self, program: str) -> dict[str, Any]:
        return next((i for i in self._infos() or [] if i["name"] == program), {})

    def _pid_of(self, program: str) -> int | None:
        pid = self._info_of(program).get("pid")
        return int(pid) if pid else None

    def _state_of(self, program: str) -> str:
        return str(self._info_of(program).get("statename", ""))

    # --- persisted state ----------------------------------------------------------------

    def _cause(self, program: str, cause: str, **detail: Any) -> None:
        self.state["last_cause"] = {
            "at": _iso(self.clock()),
            "program": program,
            "cause": cause,
            **detail,
        }
        self._history(program, cause, at=self.clock(), **detail)

    def _record_action(self, program: str, action: str, cause: str) -> None:
        self.state["last_action"] = {
            "at": _iso(self.clock()),
            "program": program,
            "action": action,
            "cause": cause,
        }
        self._history(program, action, at=self.clock(), cause=cause)

    def _history(self, program: str, event: str, at: float, **detail: Any) -> None:
        self.state["history"].append(
            {"at": _iso(at), "t": round(at, 3), "program": program, "event": event, **detail}
        )
        self._dirty = True

    def _persist(self, force: bool = False) -> None:
        now = self.clock()
        if not (self._dirty or force or now >= self._next_heartbeat):
            return
        self.state["log"] = self.tail.position()
        self.state["pid"] = os.getpid()
        self.state["updated_at"] = _iso(now)
        self.state["ports"] = self.ports.as_dict()
        for name, detector in self.detectors.items():
            self.state["programs"][name] = {
                **detector.snapshot(),
                "liveness_failures": self.liveness.failures.get(name, 0),
            }
        write_watchdog_state(self.home, self.state)
        self._dirty = False
        self._next_heartbeat = now + HEARTBEAT_S

    def _load_config_or_defaults(self) -> Config:
        try:
            return load_config(self.home)
        except ConfigError as exc:
            self.log.warning("config.reload_refused", error=str(exc))
            return Config(path=self.home.config)


def main() -> None:
    configure_logging("watchdog")
    Watchdog(Home.resolve()).run()
