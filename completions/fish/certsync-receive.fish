# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_certsync_receive_global_optspecs
    string join \n c/config= log-format= h/help V/version
end

function __fish_certsync_receive_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_certsync_receive_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_certsync_receive_using_subcommand
    set -l cmd (__fish_certsync_receive_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c certsync-receive -n "__fish_certsync_receive_needs_command" -s c -l config -d 'The config file' -r -F
complete -c certsync-receive -n "__fish_certsync_receive_needs_command" -l log-format -d 'Log format: auto (journald under systemd, else text), text, json, journald' -r
complete -c certsync-receive -n "__fish_certsync_receive_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c certsync-receive -n "__fish_certsync_receive_needs_command" -s V -l version -d 'Print version'
complete -c certsync-receive -n "__fish_certsync_receive_needs_command" -f -a "serve" -d 'Speak the certsync protocol on stdin/stdout (the authorized_keys forced command; the default when no command is given)'
complete -c certsync-receive -n "__fish_certsync_receive_needs_command" -f -a "deploy" -d 'Install what `serve` staged (root\'s half of deploy = "handoff"), reload, verify'
complete -c certsync-receive -n "__fish_certsync_receive_needs_command" -f -a "install" -d 'Validate and install a pair from local files, as a push would'
complete -c certsync-receive -n "__fish_certsync_receive_needs_command" -f -a "check" -d 'Is the installed pair valid and matching, not expiring, served on the wire?'
complete -c certsync-receive -n "__fish_certsync_receive_needs_command" -f -a "units" -d 'Write the systemd drop-ins that let certsync-deploy.service write where receive.toml installs (ReadWritePaths=) and certsync-deploy.path watch its staging dir, then say what to reload'
complete -c certsync-receive -n "__fish_certsync_receive_needs_command" -f -a "authorized-key" -d 'Print the restricted authorized_keys line for a pusher\'s public key'
complete -c certsync-receive -n "__fish_certsync_receive_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand serve" -s c -l config -d 'The config file' -r -F
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand serve" -l log-format -d 'Log format: auto (journald under systemd, else text), text, json, journald' -r
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand serve" -s h -l help -d 'Print help'
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand deploy" -s c -l config -d 'The config file' -r -F
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand deploy" -l log-format -d 'Log format: auto (journald under systemd, else text), text, json, journald' -r
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand deploy" -l dry-run -d 'Validate and say what would be done; change nothing'
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand deploy" -l force -d 'Allow a staged certificate that expires before the installed one (root\'s decision on this host; a pusher\'s --force counts only with allow_remote_force = true in receive.toml)'
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand deploy" -s h -l help -d 'Print help'
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand install" -l name -d 'The [[cert]] name in receive.toml' -r
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand install" -l cert -d 'The full chain (leaf first), e.g. fullchain.pem' -r -F
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand install" -l key -d 'The private key, e.g. privkey.pem' -r -F
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand install" -s c -l config -d 'The config file' -r -F
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand install" -l log-format -d 'Log format: auto (journald under systemd, else text), text, json, journald' -r
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand install" -l dry-run -d 'Validate and say what would be done; change nothing'
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand install" -l force -d 'Allow a certificate that expires before the installed one'
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand install" -s h -l help -d 'Print help'
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand check" -l warn-days -d 'Warn (exit non-zero) when fewer days than this are left' -r
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand check" -l metrics -d 'Also write a Prometheus textfile here' -r -F
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand check" -s c -l config -d 'The config file' -r -F
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand check" -l log-format -d 'Log format: auto (journald under systemd, else text), text, json, journald' -r
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand check" -l json -d 'Print JSON instead of text'
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand check" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand units" -l dir -d 'The systemd unit dir to write into' -r -F
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand units" -s c -l config -d 'The config file' -r -F
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand units" -l log-format -d 'Log format: auto (journald under systemd, else text), text, json, journald' -r
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand units" -s h -l help -d 'Print help'
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand authorized-key" -l pubkey -d 'The pusher\'s public key (id_ed25519.pub from `certsync-push keygen`)' -r -F
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand authorized-key" -l from -d 'Only accept the key from these addresses (e.g. 192.0.2.10/32)' -r
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand authorized-key" -s c -l config -d 'The config file' -r -F
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand authorized-key" -l log-format -d 'Log format: auto (journald under systemd, else text), text, json, journald' -r
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand authorized-key" -s h -l help -d 'Print help'
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand help; and not __fish_seen_subcommand_from serve deploy install check units authorized-key help" -f -a "serve" -d 'Speak the certsync protocol on stdin/stdout (the authorized_keys forced command; the default when no command is given)'
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand help; and not __fish_seen_subcommand_from serve deploy install check units authorized-key help" -f -a "deploy" -d 'Install what `serve` staged (root\'s half of deploy = "handoff"), reload, verify'
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand help; and not __fish_seen_subcommand_from serve deploy install check units authorized-key help" -f -a "install" -d 'Validate and install a pair from local files, as a push would'
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand help; and not __fish_seen_subcommand_from serve deploy install check units authorized-key help" -f -a "check" -d 'Is the installed pair valid and matching, not expiring, served on the wire?'
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand help; and not __fish_seen_subcommand_from serve deploy install check units authorized-key help" -f -a "units" -d 'Write the systemd drop-ins that let certsync-deploy.service write where receive.toml installs (ReadWritePaths=) and certsync-deploy.path watch its staging dir, then say what to reload'
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand help; and not __fish_seen_subcommand_from serve deploy install check units authorized-key help" -f -a "authorized-key" -d 'Print the restricted authorized_keys line for a pusher\'s public key'
complete -c certsync-receive -n "__fish_certsync_receive_using_subcommand help; and not __fish_seen_subcommand_from serve deploy install check units authorized-key help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
