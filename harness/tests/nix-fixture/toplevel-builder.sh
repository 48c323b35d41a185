# Builds a stand-in system toplevel: bin/switch-to-configuration records which generation was
# activated in $LABTEST_MARKER and points $LABTEST_CURRENT_SYSTEM at it, as NixOS's own script
# updates /run/current-system. Paths come from the environment so tests choose where they land.
mkdir -p "$out/bin"
echo "$etc" > "$out/etc-path"
cat > "$out/bin/switch-to-configuration" <<SCRIPT
#!/bin/sh
echo "generation $generation: \$1" > "\$LABTEST_MARKER"
ln -sfn "$out" "\$LABTEST_CURRENT_SYSTEM"
echo "activated generation $generation"
if [ "$activationStatus" != 0 ]; then
  echo "generation $generation: a unit failed to start" >&2
fi
exit $activationStatus
SCRIPT
chmod +x "$out/bin/switch-to-configuration"
