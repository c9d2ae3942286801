# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_certsync_push_global_optspecs
    string join \n c/config= log-format= h/help V/version
end

function __fish_certsync_push_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_certsync_push_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_certsync_push_using_subcommand
    set -l cmd (__fish_certsync_push_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c certsync-push -n "__fish_certsync_push_needs_command" -s c -l config -d 'The config file' -r -F
complete -c certsync-push -n "__fish_certsync_push_needs_command" -l log-format -d 'Log format: auto (journald under systemd, else text), text, json, journald' -r
complete -c certsync-push -n "__fish_certsync_push_needs_command" -s h -l help -d 'Print help'
complete -c certsync-push -n "__fish_certsync_push_needs_command" -s V -l version -d 'Print version'
complete -c certsync-push -n "__fish_certsync_push_needs_command" -f -a "push" -d 'One pass: offer every cert to every target, send only what differs'
complete -c certsync-push -n "__fish_certsync_push_needs_command" -f -a "watch" -d 'Run until stopped; push whenever a live dir changes'
complete -c certsync-push -n "__fish_certsync_push_needs_command" -f -a "discover" -d 'List the certbot live dirs (and NPM\'s uploaded certificates) with subject, SANs, key type, notAfter, fingerprint and consistency'
complete -c certsync-push -n "__fish_certsync_push_needs_command" -f -a "status" -d 'Per cert and target: the local fingerprint against the installed one (asks each receiver with a dry run; changes nothing)'
complete -c certsync-push -n "__fish_certsync_push_needs_command" -f -a "units" -d 'Write the systemd drop-in that makes certsync-push.path watch every live dir in the config (certsync-push.path.d/certsync-sources.conf), then say what to reload'
complete -c certsync-push -n "__fish_certsync_push_needs_command" -f -a "keygen" -d 'Make an ed25519 key pair (PATH 0600 and PATH.pub) and print the authorized_keys line for the receiving host'
complete -c certsync-push -n "__fish_certsync_push_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c certsync-push -n "__fish_certsync_push_using_subcommand push" -l target -d 'Only this [[target]] (repeatable)' -r
complete -c certsync-push -n "__fish_certsync_push_using_subcommand push" -l settle -d 'Seconds to keep re-reading a live dir that is inconsistent (certbot renewing) before giving up' -r
complete -c certsync-push -n "__fish_certsync_push_using_subcommand push" -s c -l config -d 'The config file' -r -F
complete -c certsync-push -n "__fish_certsync_push_using_subcommand push" -l log-format -d 'Log format: auto (journald under systemd, else text), text, json, journald' -r
complete -c certsync-push -n "__fish_certsync_push_using_subcommand push" -l dry-run -d 'The receivers validate and say what they would do; nothing changes'
complete -c certsync-push -n "__fish_certsync_push_using_subcommand push" -l force -d 'Let the receivers install a certificate that expires before the installed one (a rollback)'
complete -c certsync-push -n "__fish_certsync_push_using_subcommand push" -s h -l help -d 'Print help'
complete -c certsync-push -n "__fish_certsync_push_using_subcommand watch" -s c -l config -d 'The config file' -r -F
complete -c certsync-push -n "__fish_certsync_push_using_subcommand watch" -l log-format -d 'Log format: auto (journald under systemd, else text), text, json, journald' -r
complete -c certsync-push -n "__fish_certsync_push_using_subcommand watch" -s h -l help -d 'Print help'
complete -c certsync-push -n "__fish_certsync_push_using_subcommand discover" -l live-root -d 'certbot\'s live dir, or NPM\'s custom_ssl dir (uploaded certificates); repeat for several [default: the config\'s live_root and the dirs holding its sources, else /opt/npm/letsencrypt/live and /opt/npm/data/custom_ssl]' -r -F
complete -c certsync-push -n "__fish_certsync_push_using_subcommand discover" -s c -l config -d 'The config file' -r -F
complete -c certsync-push -n "__fish_certsync_push_using_subcommand discover" -l log-format -d 'Log format: auto (journald under systemd, else text), text, json, journald' -r
complete -c certsync-push -n "__fish_certsync_push_using_subcommand discover" -l json -d 'Print JSON instead of a table'
complete -c certsync-push -n "__fish_certsync_push_using_subcommand discover" -s h -l help -d 'Print help'
complete -c certsync-push -n "__fish_certsync_push_using_subcommand status" -s c -l config -d 'The config file' -r -F
complete -c certsync-push -n "__fish_certsync_push_using_subcommand status" -l log-format -d 'Log format: auto (journald under systemd, else text), text, json, journald' -r
complete -c certsync-push -n "__fish_certsync_push_using_subcommand status" -l json -d 'Print JSON instead of text'
complete -c certsync-push -n "__fish_certsync_push_using_subcommand status" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c certsync-push -n "__fish_certsync_push_using_subcommand units" -l dir -d 'The systemd unit dir to write into' -r -F
complete -c certsync-push -n "__fish_certsync_push_using_subcommand units" -s c -l config -d 'The config file' -r -F
complete -c certsync-push -n "__fish_certsync_push_using_subcommand units" -l log-format -d 'Log format: auto (journald under systemd, else text), text, json, journald' -r
complete -c certsync-push -n "__fish_certsync_push_using_subcommand units" -s h -l help -d 'Print help'
complete -c certsync-push -n "__fish_certsync_push_using_subcommand keygen" -l out -d 'Where to write the private key' -r -F
complete -c certsync-push -n "__fish_certsync_push_using_subcommand keygen" -s c -l config -d 'The config file' -r -F
complete -c certsync-push -n "__fish_certsync_push_using_subcommand keygen" -l log-format -d 'Log format: auto (journald under systemd, else text), text, json, journald' -r
complete -c certsync-push -n "__fish_certsync_push_using_subcommand keygen" -s h -l help -d 'Print help'
complete -c certsync-push -n "__fish_certsync_push_using_subcommand help; and not __fish_seen_subcommand_from push watch discover status units keygen help" -f -a "push" -d 'One pass: offer every cert to every target, send only what differs'
complete -c certsync-push -n "__fish_certsync_push_using_subcommand help; and not __fish_seen_subcommand_from push watch discover status units keygen help" -f -a "watch" -d 'Run until stopped; push whenever a live dir changes'
complete -c certsync-push -n "__fish_certsync_push_using_subcommand help; and not __fish_seen_subcommand_from push watch discover status units keygen help" -f -a "discover" -d 'List the certbot live dirs (and NPM\'s uploaded certificates) with subject, SANs, key type, notAfter, fingerprint and consistency'
complete -c certsync-push -n "__fish_certsync_push_using_subcommand help; and not __fish_seen_subcommand_from push watch discover status units keygen help" -f -a "status" -d 'Per cert and target: the local fingerprint against the installed one (asks each receiver with a dry run; changes nothing)'
complete -c certsync-push -n "__fish_certsync_push_using_subcommand help; and not __fish_seen_subcommand_from push watch discover status units keygen help" -f -a "units" -d 'Write the systemd drop-in that makes certsync-push.path watch every live dir in the config (certsync-push.path.d/certsync-sources.conf), then say what to reload'
complete -c certsync-push -n "__fish_certsync_push_using_subcommand help; and not __fish_seen_subcommand_from push watch discover status units keygen help" -f -a "keygen" -d 'Make an ed25519 key pair (PATH 0600 and PATH.pub) and print the authorized_keys line for the receiving host'
complete -c certsync-push -n "__fish_certsync_push_using_subcommand help; and not __fish_seen_subcommand_from push watch discover status units keygen help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
