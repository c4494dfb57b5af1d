# SPDX-License-Identifier: GPL-3.0-or-later
"""The plugin inside real Mailman (Debian's 3.3.8): loaded from a
[plugin.mailman_mmsidecar] section by Mailman's own initialize(), a runner's
own passes (Runner._one_iteration), a real `runner` process, and a CLI
command."""

import glob
import logging
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import PLUGIN_DIR, is_held, record, write_gate
from mailman.config import config
from mailman.core.runner import Runner
from mailman.email.message import Message

PYTHON = '/usr/bin/python3'
BIN_DIR = '/usr/lib/mailman3/bin'


class RecordingRunner(Runner):
    """A queue runner whose processing only records the Message-ID (the
    loop around it is Mailman's own)."""

    processed = []

    def _process_one_file(self, msg, msgdata):
        RecordingRunner.processed.append(msg['Message-ID'])


@pytest.fixture(scope='session')
def site(tmp_path_factory):
    """One Mailman site for the session: its config (with the plugin and a
    `configuration:` file moving the state dir out of queue_dir), and
    Mailman initialized in this process from it."""
    root = tmp_path_factory.mktemp('mailman')
    var = root / 'var'
    state_dir = root / 'sidecar-state'
    gate_cfg = root / 'mmsidecar-gate.cfg'
    gate_cfg.write_text('[mmsidecar]\nstate_dir: {}\n'.format(state_dir))
    cfg = root / 'mailman.cfg'
    cfg.write_text(textwrap.dedent('''\
        [mailman]
        layout: gtest
        site_owner: postmaster@example.com

        [paths.gtest]
        var_dir: {var}
        queue_dir: $var_dir/queue
        bin_dir: {bin_dir}
        list_data_dir: $var_dir/lists
        log_dir: $var_dir/logs
        lock_dir: $var_dir/locks
        data_dir: $var_dir/data
        cache_dir: $var_dir/cache
        etc_dir: {root}
        ext_dir: $var_dir/ext
        messages_dir: $var_dir/messages
        archive_dir: $var_dir/archives
        template_dir: $var_dir/templates
        pid_file: $var_dir/master.pid
        lock_file: $lock_dir/master.lck

        [database]
        class: mailman.database.sqlite.SQLiteDatabase
        url: sqlite:///{var}/data/mailman.db

        [mta]
        incoming: mailman.mta.null.NullMTA

        [logging.debug]
        level: debug

        [runner.in]
        sleep_time: 0.1s

        [runner.gtest]
        class: test_mailman.RecordingRunner
        path: $QUEUE_DIR/$name
        start: no
        sleep_time: 0.1s

        [plugin.mailman_mmsidecar]
        class: mailman_mmsidecar.GatePlugin
        enabled: yes
        configuration: {gate_cfg}
        ''').format(var=var, bin_dir=BIN_DIR, root=root, gate_cfg=gate_cfg))
    from mailman.core.initialize import initialize
    initialize(str(cfg))
    return {'cfg': str(cfg), 'var': var, 'state_dir': str(state_dir),
            'queue': var / 'queue'}


@pytest.fixture
def captured():
    """The mailman.runner log records of one test."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger('mailman.runner')
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def gate_lines(records):
    return [r.getMessage() for r in records
            if r.getMessage().startswith('mmsidecar gate')]


def clear_queue(path):
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        os.unlink(os.path.join(path, name))


def message(tag):
    msg = Message()
    msg['Message-ID'] = '<{}-{}@example.com>'.format(tag, time.time())
    msg['From'] = 'someone@example.com'
    msg['To'] = 'nolist@example.com'
    msg.set_payload('x' * 4096)
    return msg


def test_mailman_loaded_the_plugin(site):
    import mailman.core.runner
    assert 'mailman_mmsidecar' in config.plugins
    assert hasattr(mailman.core.runner.Switchboard, '_mmsidecar_base')
    # The global switchboards (enqueue, REST listings) are not gated.
    assert not hasattr(config.switchboards['in'], '_mmsidecar')


def test_runner_passes_honour_the_gate(site, captured):
    state_dir = site['state_dir']
    if os.path.exists(os.path.join(state_dir, 'gate.json')):
        os.unlink(os.path.join(state_dir, 'gate.json'))
    clear_queue(site['queue'] / 'gtest')
    runner = RecordingRunner('gtest')
    RecordingRunner.processed.clear()
    ids = []
    for i in range(3):
        msg = message('pass{}'.format(i))
        runner.switchboard.enqueue(msg, listid='test.example.com')
        ids.append(msg['Message-ID'])

    for _ in range(3):                    # no gate: nothing, and the runner
        assert runner._one_iteration() == 0       # sleeps (count 0)
    assert RecordingRunner.processed == []

    write_gate(state_dir, record(admit='none', reason='draining'))
    assert runner._one_iteration() == 0

    write_gate(state_dir, record())
    assert runner._one_iteration() == 3
    assert RecordingRunner.processed == ids
    assert runner._one_iteration() == 0   # empty queue
    assert os.listdir(site['queue'] / 'gtest') == []

    assert gate_lines(captured) == [
        'mmsidecar gate, runner gtest:0:1: closed (no gate)',
        'mmsidecar gate, runner gtest:0:1: closed (admit none; record: '
        'draining, node n1, epoch 3)',
        'mmsidecar gate, runner gtest:0:1: open (record: live, node n1, '
        'epoch 3)',
    ]

    records = glob.glob(os.path.join(state_dir, 'runners', '*.json'))
    mine = [p for p in records if runner.switchboard._mmsidecar.record.path
            == p]
    assert mine and is_held(mine[0])


def test_state_dir_from_the_configuration_file(site, tmp_path):
    from mailman_mmsidecar.plugin import state_dir_for
    assert state_dir_for('mailman_mmsidecar') == (site['state_dir'], None)
    for name, body, want in [
            ('nocfg', '', (str(site['queue'] / '.mmsidecar'), None)),
            ('missing', 'configuration: {}/none.cfg'.format(tmp_path), None),
            ('relative', 'configuration: {}/rel.cfg'.format(tmp_path), None),
    ]:
        (tmp_path / 'rel.cfg').write_text('[mmsidecar]\nstate_dir: rel\n')
        config.push(name, '[plugin.{}]\nclass: x.Y\nenabled: no\n'
                    'component_package: mailman_mmsidecar\n{}\n'.format(
            name, body))
        try:
            got = state_dir_for(name)
        finally:
            config.pop(name)
        if want is None:
            assert got[0] is None and got[1], got
        else:
            assert got == want


def run_env():
    env = {k: v for k, v in os.environ.items()
           if k not in ('MAILMAN_CONFIG_FILE', 'MAILMAN_VAR_DIR')}
    env['PYTHONPATH'] = str(PLUGIN_DIR)
    env['PYTHONDONTWRITEBYTECODE'] = '1'
    return env


def wait_for(what, cond, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail('timed out waiting for ' + what)
        time.sleep(0.05)


def read(path):
    try:
        return pathlib.Path(path).read_text(errors='replace')
    except FileNotFoundError:
        return ''


def test_a_real_runner_process(site):
    """bin/runner, as the master starts it: closed, it leaves the entry
    and keeps sleeping; opened, it runs it (the in runner shunts a post
    for a list that does not exist); its runner record is locked while it
    lives."""
    state_dir = site['state_dir']
    queue = site['queue']
    logs = site['var'] / 'logs'
    clear_queue(queue / 'in')
    clear_queue(queue / 'shunt')
    write_gate(state_dir, record(admit='none', reason='draining'))
    from mailman.core.switchboard import Switchboard
    base = Switchboard('in', str(queue / 'in')).enqueue(
        message('real'), listid='nolist.example.com')
    before = set(glob.glob(os.path.join(state_dir, 'runners', '*.json')))
    debug_at = len(read(logs / 'debug.log'))

    proc = subprocess.Popen(
        [PYTHON, os.path.join(BIN_DIR, 'runner'), '-C', site['cfg'],
         '--runner=in:0:1'], env=run_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    try:
        line = wait_for('the runner to log the closed gate', lambda: (
            'mmsidecar gate, runner in:0:1: closed (admit none'
            in read(logs / 'mailman.log')) or proc.poll() is not None)
        assert proc.poll() is None, proc.stdout.read().decode()
        assert line
        # Passes go by, each handing out nothing.
        wait_for('five empty passes', lambda: read(logs / 'debug.log')[
            debug_at:].count('[IncomingRunner] ending oneloop: 0') >= 5)
        assert os.listdir(queue / 'in') == [base + '.pck']
        assert os.listdir(queue / 'shunt') == []

        mine = set(glob.glob(os.path.join(
            state_dir, 'runners', '*.json'))) - before
        assert len(mine) == 1
        mine = mine.pop()
        assert is_held(mine)

        write_gate(state_dir, record())
        # Run: shunted (no such list), then its .bak finished.
        wait_for('the entry to be run', lambda: os.listdir(
            queue / 'shunt') and not os.listdir(queue / 'in'))
        assert 'mmsidecar gate, runner in:0:1: open' in read(
            logs / 'mailman.log')
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert not is_held(mine)
    assert glob.glob(str(queue / 'bad' / '*')) == []


def test_a_cli_command_keeps_no_runner_record(site):
    runners_dir = os.path.join(site['state_dir'], 'runners')
    before = set(os.listdir(runners_dir)) if os.path.isdir(
        runners_dir) else set()
    out = subprocess.run(
        [PYTHON, os.path.join(BIN_DIR, 'mailman'), '-C', site['cfg'],
         '--run-as-root', 'info'], env=run_env(), capture_output=True,
        text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'GNU Mailman' in out.stdout
    after = set(os.listdir(runners_dir)) if os.path.isdir(
        runners_dir) else set()
    assert after == before


if __name__ == '__main__':
    sys.exit(pytest.main([__file__]))
