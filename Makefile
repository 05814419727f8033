# The two commands of the README: `make demo` (the lab, end to end) and
# `make test` (the whole suite). Both install what they need first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := iproute2 iperf3 ethtool procps rabbitmq-server keepalived openvswitch-switch \
	nftables python3-nftables
# The tools the tests check the shipped files with (shellcheck: the devstack
# plugin and the Vagrant provisioners; vagrant validate; systemd-analyze verify
# and setpriv: the unit), without their recommends (vagrant-libvirt's pull in
# libguestfs and an NFS server).
APT_TOOLS := shellcheck vagrant vagrant-libvirt systemd util-linux

.PHONY: demo test bench setup system-packages venv neutron-venv sample-config lab-down clean

# The demo's steps, its progress lines and the log of its installs: tools/demo.sh.
demo:
	@tools/demo.sh

test: setup
	$(PY) -m pytest tests -q -p no:cacheprovider --durations=20

bench: setup
	$(PY) -m pytest bench -p no:cacheprovider --benchmark-only --benchmark-columns=min,mean,max -q -s

lab-down:
	$(VENV)/bin/gwagent lab down

setup: system-packages venv neutron-venv

# The Neutron servers of the integration tests, the Neutron bench and
# `gwagent lab up --neutron` run from their own venv, with gwagent's ML2 driver.
neutron-venv: .venv-neutron/.installed

.venv-neutron/.installed: pyproject.toml tools/setup-neutron-venv.sh
	tools/setup-neutron-venv.sh
	touch $@

system-packages:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	tools=""; for p in $(APT_TOOLS); do dpkg -s $$p >/dev/null 2>&1 || tools="$$tools $$p"; done; \
	if [ -n "$$missing$$tools" ]; then \
		echo "installing Debian packages:$$missing$$tools"; \
		apt-get update -qq; \
	fi; \
	if [ -n "$$missing" ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi; \
	if [ -n "$$tools" ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$tools; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	@# libnftables' Python binding (the ingress filter) is Debian's, for the
	@# system Python: one pure-Python package, linked into the venv.
	ln -sfn /usr/lib/python3/dist-packages/nftables \
		"$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nftables"
	touch $@

sample-config: venv
	$(VENV)/bin/oslo-config-generator --namespace gwagent --namespace oslo.log --output-file etc/gwagent.conf.sample

clean:
	rm -rf $(VENV) build *.egg-info .benchmarks
